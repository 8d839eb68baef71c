//! The in-process store: for a single replica. Records expire by their TTL; pending login
//! attempts are capped so that a flood of `/oauth2/start` cannot grow memory without bound.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::{now_millis, LoginRecord, SessionRecord, SessionStore, StoreError};

const MAX_PENDING_LOGINS: usize = 100_000;

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
                    return Err(StoreError::Unavailable(
                        "too many pending logins".to_owned(),
                    ));
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
