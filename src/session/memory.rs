//! The in-process store: for a single replica. Records expire by their TTL; pending login
//! attempts are capped so that a flood of `/oauth2/start` cannot grow memory without bound, and
//! a full cap drops a random batch rather than refusing new logins (which would lock users out).
//! Deadlines are Unix milliseconds counted from the `now` each call is given.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::{PendingLogin, SessionRecord, SessionStore, StoreError};
use crate::clock::Now;

const MAX_PENDING_LOGINS: usize = 100_000;
/// How many pending logins are dropped at once when the cap is reached.
const EVICTION_BATCH: usize = MAX_PENDING_LOGINS / 100;

/// Sessions and pending logins in this process's memory, each with its deadline.
#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<String, (SessionRecord, Now)>,
    logins: DashMap<String, (PendingLogin, Now)>,
}

impl MemoryStore {
    /// An empty store, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Drops the records whose deadline has passed at `now`. Called by `Sessions::cleanup`
    /// and when the pending logins reach their cap; expired records are never returned, swept
    /// or not.
    pub fn sweep(&self, now: Now) {
        self.sessions.retain(|_, (_, deadline)| *deadline > now);
        self.logins.retain(|_, (_, deadline)| *deadline > now);
    }
}

impl SessionStore for MemoryStore {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .sessions
                .get(key)
                .filter(|e| e.1 > now)
                .map(|e| e.0.clone()))
        })
    }

    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.sessions
                .insert(key.to_owned(), (record.clone(), now.after(ttl)));
            Ok(())
        })
    }

    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.sessions.remove(key);
            Ok(())
        })
    }

    fn put_pending_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a PendingLogin,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.logins.len() >= MAX_PENDING_LOGINS {
                self.sweep(now);
                if self.logins.len() >= MAX_PENDING_LOGINS {
                    // Still full: a flood of `/oauth2/start`. Refusing new attempts would lock
                    // every user out for the attempts' lifetime; dropping a batch instead keeps
                    // logins possible (an attempt lives seconds, a batch is 1% of the cap, and
                    // keys are random, so the batch is a random sample).
                    let mut drop = EVICTION_BATCH;
                    self.logins.retain(|_, _| {
                        if drop == 0 {
                            return true;
                        }
                        drop -= 1;
                        false
                    });
                    tracing::warn!(
                        evicted = EVICTION_BATCH,
                        "pending logins at their cap of {MAX_PENDING_LOGINS}: dropped a random batch"
                    );
                }
            }
            self.logins
                .insert(state.to_owned(), (record.clone(), now.after(ttl)));
            Ok(())
        })
    }

    fn take_pending_login<'a>(
        &'a self,
        state: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .logins
                .remove(state)
                .filter(|(_, (_, deadline))| *deadline > now)
                .map(|(_, (rec, _))| rec))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn watch_revocations(self: Arc<Self>, _evict: super::Evict) {
        // One replica: `Sessions::revoke` already evicted its own cache.
    }

    fn sweep_expired(&self, now: Now) {
        self.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingLogin {
        PendingLogin {
            pkce_verifier: "v".into(),
            nonce: "n".into(),
            return_url: "https://example.com/".into(),
            binding: "b".into(),
        }
    }

    /// A flood of login attempts past the cap never refuses a new attempt, and memory stays
    /// bounded.
    #[tokio::test]
    async fn a_full_login_cap_drops_a_batch_instead_of_refusing() {
        let store = MemoryStore::new();
        let record = pending();
        let ttl = Duration::from_secs(600);
        let now = Now::from_unix_secs(1_800_000_000);
        for i in 0..MAX_PENDING_LOGINS + 2 * EVICTION_BATCH {
            store
                .put_pending_login(&format!("state-{i}"), &record, ttl, now)
                .await
                .expect("a new attempt is always stored");
        }
        assert!(store.logins.len() <= MAX_PENDING_LOGINS);
        // The newest attempt is there to finish.
        let last = format!("state-{}", MAX_PENDING_LOGINS + 2 * EVICTION_BATCH - 1);
        assert!(store
            .take_pending_login(&last, now)
            .await
            .unwrap()
            .is_some());
    }

    /// At the cap, expired attempts are swept first: no live attempt is dropped while expired
    /// ones take the room.
    #[tokio::test]
    async fn a_full_login_cap_sweeps_expired_attempts_first() {
        let store = MemoryStore::new();
        let record = pending();
        let ttl = Duration::from_secs(600);
        let t0 = Now::from_unix_secs(1_800_000_000);
        for i in 0..MAX_PENDING_LOGINS {
            store
                .put_pending_login(&format!("old-{i}"), &record, ttl, t0)
                .await
                .unwrap();
        }
        let later = t0.after(ttl);
        store
            .put_pending_login("new", &record, ttl, later)
            .await
            .unwrap();
        assert_eq!(store.logins.len(), 1, "every expired attempt swept");
        assert!(store
            .take_pending_login("new", later)
            .await
            .unwrap()
            .is_some());
    }
}
