//! Sessions and login state: the [`SessionStore`] seam (memory or Redis), the local cache in
//! front of it, and the cookie codec.
//!
//! Invariants: a session is found only through a cookie whose signature holds; the store is
//! keyed by a hash of the id, never the id; a store failure is an error value the caller must
//! turn into a deny (503), except that a session validated within `cache_ttl` may still pass;
//! a sign-out evicts the session from this replica's cache at once and from every other
//! replica's through the store's broadcast; login state is single-use (taken atomically).

pub mod cookie;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use cookie::{digest, hex, parse_hex, store_key, CookieCodec, Purpose};

/// What the store keeps for a session. No provider token is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub email: String,
    /// Unix seconds.
    pub expires: u64,
}

/// What the store keeps for one login attempt, keyed by its `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRecord {
    pub pkce_verifier: String,
    pub nonce: String,
    pub return_url: String,
    /// Store key of the browser's binding-cookie id.
    pub binding: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store holds an unreadable record")]
    Corrupt,
}

/// Called with a revoked session's store key, or `None` for "forget every cached session".
pub type Evict = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// A cached validation: the email, when it was checked (Unix ms), when the session ends (Unix s).
type CacheEntry = (Arc<str>, u64, u64);

/// Where sessions and login attempts live. Implementations keep every record no longer than
/// the TTL they are given.
pub trait SessionStore: Send + Sync {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;
    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes the session and tells every replica to drop it from its cache.
    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    fn put_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a LoginRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes and returns the login record: a `state` works once.
    fn take_login<'a>(
        &'a self,
        state: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoginRecord>, StoreError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Starts delivering revoked session keys from other replicas to `evict`. Stores without
    /// replicas do nothing.
    fn watch_revocations(self: Arc<Self>, evict: Evict);
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a request's cookies say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// No cookie, or none that verifies, or a session that ended.
    None,
    Valid {
        email: Arc<str>,
    },
    /// The store did not answer and no recent validation is cached.
    StoreUnavailable,
}

/// Distinct signed session ids looked up per request, at most.
const MAX_COOKIE_TRIES: usize = 4;

/// Cache entries held at most; beyond it sessions are simply checked against the store.
const CACHE_MAX: usize = 200_000;

/// Sessions as the HTTP edge uses them: cookie codec + store + local cache.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    codec: CookieCodec,
    /// Keyed by the id's SHA-256 digest: no string is built on a cache hit.
    cache: Arc<DashMap<[u8; 32], CacheEntry, foldhash::fast::RandomState>>,
    cache_ttl_ms: u64,
    lifetime: Duration,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        codec: CookieCodec,
        cache_ttl: Duration,
        lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let sessions = Arc::new(Self {
            store: store.clone(),
            codec,
            cache: Arc::default(),
            cache_ttl_ms: u64::try_from(cache_ttl.as_millis()).unwrap_or(u64::MAX),
            lifetime,
            metrics,
        });
        let cache = sessions.cache.clone();
        store.watch_revocations(Arc::new(move |key: Option<&str>| match key {
            Some(k) => {
                if let Some(d) = parse_hex(k) {
                    cache.remove(&d);
                }
            }
            // The broadcast may have been missed (reconnect): forget everything.
            None => cache.clear(),
        }));
        sessions
    }

    pub fn codec(&self) -> &CookieCodec {
        &self.codec
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn error(&self, op: &'static str, e: &StoreError) {
        self.metrics
            .session_store_errors
            .get_or_create(&vec![("op", op)])
            .inc();
        tracing::warn!(op, error = %e, "session store error");
    }

    /// Resolves the session from the values of the session cookie (several may be sent, e.g.
    /// one per cookie domain). At most [`MAX_COOKIE_TRIES`] distinct signed ids are looked up,
    /// and the first store failure ends the search: a request repeating a cookie cannot turn
    /// into hundreds of store round trips, each up to the store timeout.
    pub async fn resolve<'a>(&self, values: impl Iterator<Item = &'a str>) -> SessionState {
        let mut tried: Vec<&str> = Vec::new();
        for value in values {
            let Some(id) = self.codec.verify(Purpose::Session, value) else {
                continue;
            };
            if tried.contains(&id) {
                continue;
            }
            if tried.len() == MAX_COOKIE_TRIES {
                break;
            }
            tried.push(id);
            let d = digest(id);
            let now_ms = now_millis();
            // cache_ttl = 0 turns the cache off: every request asks the store.
            let hit = if self.cache_ttl_ms == 0 {
                None
            } else {
                self.cache.get(&d)
            };
            if let Some(hit) = hit {
                let (email, checked_ms, expires) = hit.clone();
                if now_ms.saturating_sub(checked_ms) <= self.cache_ttl_ms && expires > now_ms / 1000
                {
                    return SessionState::Valid { email };
                }
            }
            let key = hex(&d);
            match self.store.get_session(&key).await {
                Ok(Some(rec)) if rec.expires > now_ms / 1000 => {
                    let email: Arc<str> = rec.email.into();
                    if self.cache_ttl_ms > 0 && self.cache.len() < CACHE_MAX {
                        self.cache.insert(d, (email.clone(), now_ms, rec.expires));
                    }
                    return SessionState::Valid { email };
                }
                Ok(_) => {
                    self.cache.remove(&d);
                }
                Err(e) => {
                    self.error("get", &e);
                    return SessionState::StoreUnavailable;
                }
            }
        }
        SessionState::None
    }

    /// Creates a session for `email` and returns the signed cookie value. A fresh id every
    /// time: a login never reuses an id the browser brought (session fixation).
    pub async fn create(&self, email: &str) -> Result<String, StoreError> {
        let id = cookie::random_id();
        let record = SessionRecord {
            email: email.to_owned(),
            expires: now_unix() + self.lifetime.as_secs(),
        };
        if let Err(e) = self
            .store
            .put_session(&store_key(&id), &record, self.lifetime)
            .await
        {
            self.error("put", &e);
            return Err(e);
        }
        Ok(self.codec.sign(Purpose::Session, &id))
    }

    /// Ends every session named by the cookie values.
    pub async fn revoke<'a>(
        &self,
        values: impl Iterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        for value in values {
            if let Some(id) = self.codec.verify(Purpose::Session, value) {
                let d = digest(id);
                self.cache.remove(&d);
                let key = hex(&d);
                if let Err(e) = self.store.revoke_session(&key).await {
                    self.error("revoke", &e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub async fn put_login(
        &self,
        state: &str,
        record: &LoginRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.store
            .put_login(state, record, ttl)
            .await
            .inspect_err(|e| self.error("login_put", e))
    }

    pub async fn take_login(&self, state: &str) -> Result<Option<LoginRecord>, StoreError> {
        self.store
            .take_login(state)
            .await
            .inspect_err(|e| self.error("login_take", e))
    }

    pub async fn ping(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Drops cache entries older than `cache_ttl`; call periodically.
    pub fn cleanup(&self) {
        let now_ms = now_millis();
        let ttl = self.cache_ttl_ms;
        self.cache
            .retain(|_, (_, checked, _)| now_ms.saturating_sub(*checked) <= ttl);
    }
}

#[cfg(test)]
mod tests;
