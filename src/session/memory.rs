//! The in-process store: for a single replica. Records expire by their TTL; pending login
//! attempts are capped so that a flood of `/oauth2/start` cannot grow memory without bound, and
//! a full cap drops a random batch rather than refusing new logins (which would lock users out).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::{now_millis, LoginRecord, SessionRecord, SessionStore, StoreError};

const MAX_PENDING_LOGINS: usize = 100_000;
/// How many pending logins are dropped at once when the cap is reached.
const EVICTION_BATCH: usize = MAX_PENDING_LOGINS / 100;

#[derive(Default)]
pub struct MemoryStore {
    sessions: DashMap<String, (SessionRecord, u64)>,
    logins: DashMap<String, (LoginRecord, u64)>,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn deadline(ttl: Duration) -> u64 {
        now_millis().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Drops expired records; the server calls this periodically.
    pub fn sweep(&self) {
        let now = now_millis();
        self.sessions.retain(|_, (_, exp)| *exp > now);
        self.logins.retain(|_, (_, exp)| *exp > now);
    }
}

impl SessionStore for MemoryStore {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .sessions
                .get(key)
                .filter(|e| e.1 > now_millis())
                .map(|e| e.0.clone()))
        })
    }

    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.sessions
                .insert(key.to_owned(), (record.clone(), Self::deadline(ttl)));
            Ok(())
        })
    }

    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.sessions.remove(key);
            Ok(())
        })
    }

    fn put_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a LoginRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.logins.len() >= MAX_PENDING_LOGINS {
                self.sweep();
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
                .insert(state.to_owned(), (record.clone(), Self::deadline(ttl)));
            Ok(())
        })
    }

    fn take_login<'a>(
        &'a self,
        state: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoginRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .logins
                .remove(state)
                .filter(|(_, (_, exp))| *exp > now_millis())
                .map(|(_, (rec, _))| rec))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn watch_revocations(self: Arc<Self>, _evict: super::Evict) {
        // One replica: `Sessions::revoke` already evicted its own cache.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of login attempts past the cap never refuses a new attempt, and memory stays
    /// bounded.
    #[tokio::test]
    async fn a_full_login_cap_drops_a_batch_instead_of_refusing() {
        let store = MemoryStore::new();
        let record = LoginRecord {
            pkce_verifier: "v".into(),
            nonce: "n".into(),
            return_url: "https://example.com/".into(),
            binding: "b".into(),
        };
        let ttl = Duration::from_secs(600);
        for i in 0..MAX_PENDING_LOGINS + 2 * EVICTION_BATCH {
            store
                .put_login(&format!("state-{i}"), &record, ttl)
                .await
                .expect("a new attempt is always stored");
        }
        assert!(store.logins.len() <= MAX_PENDING_LOGINS);
        // The newest attempt is there to finish.
        let last = format!("state-{}", MAX_PENDING_LOGINS + 2 * EVICTION_BATCH - 1);
        assert!(store.take_login(&last).await.unwrap().is_some());
    }
}
