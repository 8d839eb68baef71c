//! Sessions and login state: the [`SessionStore`] seam (memory or Redis), the local cache in
//! front of it, and the cookie codec.
//!
//! Invariants: a session is found only through a cookie whose signature holds; the store is
//! keyed by a hash of the id, never the id; a store failure is an error value the caller must
//! turn into a deny (503), except that a session validated within `cache_ttl` may still pass;
//! a sign-out evicts the session from this replica's cache at once and from every other
//! replica's through the store's broadcast; login state is single-use (taken atomically).
//! Nothing here reads a clock: the edge reads one per request and passes the instant (`now`).

pub mod cookie;
pub mod memory;
pub mod redis;
pub(crate) mod redis_conn;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::{millis, Now};
use cookie::{digest, hex, parse_hex, store_key, CookieCodec, Purpose};

/// What the store keeps for a session. No provider token is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The lower-case email address the session was created for.
    pub email: String,
    /// When the session ends, in Unix seconds.
    pub expires: u64,
}

/// A login attempt between `/oauth2/start` and its callback, stored under its `state` and the
/// browser's binding. Taken once: a callback that finds it uses it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The PKCE code verifier the token exchange must present.
    pub pkce_verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// Where the browser goes once signed in (absolute, already checked by the redirect policy).
    pub return_url: String,
    /// Store key of the browser's binding-cookie id.
    pub binding: String,
}

/// Why a store operation failed. Messages never hold a session id or cookie.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer, or answered with an error (the reason, from its client).
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be read or written as JSON (the reason, from serde).
    #[error("session store holds an unreadable record: {0}")]
    Corrupt(String),
}

/// Called with a revoked session's store key, or `None` for "forget every cached session".
pub type Evict = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// A cached validation: the email, when it was checked, when the session ends (Unix s).
type CacheEntry = (Arc<str>, Now, u64);

/// Where sessions and login attempts live. Implementations keep every record no longer than
/// the TTL they are given, counted from `now` (a store with a clock of its own, like Redis,
/// may ignore `now`). Keys are store keys (hex SHA-256 of an id), never ids.
pub trait SessionStore: Send + Sync {
    /// The session under `key`, or `None` when there is none or it has expired at `now`.
    fn get_session<'a>(
        &'a self,
        key: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;
    /// Stores a session under `key` for `ttl` from `now`, replacing any.
    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes the session and tells every replica to drop it from its cache.
    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Stores a login attempt under `state` for `ttl` from `now`.
    fn put_pending_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a PendingLogin,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes and returns the login attempt, `None` when there is none or it has expired at
    /// `now`: a `state` works once.
    fn take_pending_login<'a>(
        &'a self,
        state: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, StoreError>>;
    /// Checks that the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Starts delivering revoked session keys from other replicas to `evict`. Stores without
    /// replicas do nothing.
    fn watch_revocations(self: Arc<Self>, evict: Evict);
    /// Drops the records that have expired at `now`. Stores that expire keys by themselves
    /// (Redis) do nothing.
    fn sweep_expired(&self, now: Now) {
        let _ = now;
    }
}

/// Distinct signed session ids looked up per request, at most.
const MAX_COOKIE_TRIES: usize = 4;

/// Cache entries held at most; beyond it sessions are simply checked against the store.
const CACHE_MAX: usize = 200_000;

/// Sessions as the HTTP edge uses them: cookie codec + store + local cache. Store failures are
/// returned, never counted or logged here: the edge owns metrics and logs.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    codec: CookieCodec,
    /// Keyed by the id's SHA-256 digest: no string is built on a cache hit.
    cache: Arc<DashMap<[u8; 32], CacheEntry, foldhash::fast::RandomState>>,
    cache_ttl_ms: u64,
    lifetime: Duration,
}

impl Sessions {
    /// Sessions over `store`, signed with `codec`. A store validation is trusted for
    /// `cache_ttl` on this replica (0 turns the cache off); a session lasts `lifetime`.
    /// Subscribes to the store's revocation broadcast, so it must run inside a tokio runtime
    /// when the store is Redis.
    pub fn new(
        store: Arc<dyn SessionStore>,
        codec: CookieCodec,
        cache_ttl: Duration,
        lifetime: Duration,
    ) -> Arc<Self> {
        let sessions = Arc::new(Self {
            store: store.clone(),
            codec,
            cache: Arc::default(),
            cache_ttl_ms: millis(cache_ttl),
            lifetime,
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

    /// The codec that signs and verifies session and binding cookies.
    pub fn codec(&self) -> &CookieCodec {
        &self.codec
    }

    /// How long a new session lasts (the cookie's `Max-Age` and the record's TTL).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Resolves the session from the values of the session cookie (several may be sent, e.g.
    /// one per cookie domain) at `now`: the session's email, or `None` when no value names a
    /// live session. At most [`MAX_COOKIE_TRIES`] distinct signed ids are looked up, and the
    /// first store failure ends the search: a request repeating a cookie cannot turn into
    /// hundreds of store round trips, each up to the store timeout.
    ///
    /// # Errors
    ///
    /// The store's error when it failed for a session this replica has not validated within
    /// `cache_ttl`; the caller must deny (503).
    pub async fn resolve<'a>(
        &self,
        values: impl Iterator<Item = &'a str>,
        now: Now,
    ) -> Result<Option<Arc<str>>, StoreError> {
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
            // cache_ttl = 0 turns the cache off: every request asks the store.
            let hit = if self.cache_ttl_ms == 0 {
                None
            } else {
                self.cache.get(&d)
            };
            if let Some(hit) = hit {
                let (email, checked, expires) = hit.clone();
                if now.millis_since(checked) <= self.cache_ttl_ms && expires > now.unix_secs() {
                    return Ok(Some(email));
                }
            }
            let key = hex(&d);
            match self.store.get_session(&key, now).await? {
                Some(rec) if rec.expires > now.unix_secs() => {
                    let email: Arc<str> = rec.email.into();
                    if self.cache_ttl_ms > 0 && self.cache.len() < CACHE_MAX {
                        self.cache.insert(d, (email.clone(), now, rec.expires));
                    }
                    return Ok(Some(email));
                }
                _ => {
                    self.cache.remove(&d);
                }
            }
        }
        Ok(None)
    }

    /// Creates a session for `email`, starting at `now`, and returns the signed cookie value. A
    /// fresh id every time: a login never reuses an id the browser brought (session fixation).
    ///
    /// # Errors
    ///
    /// The store's error when it could not keep the session; no cookie is issued then.
    pub async fn create(&self, email: &str, now: Now) -> Result<String, StoreError> {
        let id = cookie::random_id();
        let record = SessionRecord {
            email: email.to_owned(),
            expires: now.after(self.lifetime).unix_secs(),
        };
        self.store
            .put_session(&store_key(&id), &record, self.lifetime, now)
            .await?;
        Ok(self.codec.sign(Purpose::Session, &id))
    }

    /// Ends every session named by the cookie values, evicting each from this replica's cache
    /// at once and from the others' through the store's broadcast.
    ///
    /// # Errors
    ///
    /// The first store failure; sessions after it in `values` are left as they were.
    pub async fn revoke<'a>(
        &self,
        values: impl Iterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        for value in values {
            if let Some(id) = self.codec.verify(Purpose::Session, value) {
                let d = digest(id);
                self.cache.remove(&d);
                self.store.revoke_session(&hex(&d)).await?;
            }
        }
        Ok(())
    }

    /// Stores a login attempt under `key` for `ttl` from `now`.
    ///
    /// # Errors
    ///
    /// The store's error; the login cannot start then.
    pub async fn put_pending_login(
        &self,
        key: &str,
        record: &PendingLogin,
        ttl: Duration,
        now: Now,
    ) -> Result<(), StoreError> {
        self.store.put_pending_login(key, record, ttl, now).await
    }

    /// Takes (removes and returns) the login attempt under `key`, if it is there and has not
    /// expired at `now`.
    ///
    /// # Errors
    ///
    /// The store's error; whether the attempt was used up is then unknown.
    pub async fn take_pending_login(
        &self,
        key: &str,
        now: Now,
    ) -> Result<Option<PendingLogin>, StoreError> {
        self.store.take_pending_login(key, now).await
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Drops cache entries validated longer than `cache_ttl` before `now`, and the store's
    /// expired records when it keeps them in this process; call periodically.
    pub fn cleanup(&self, now: Now) {
        let ttl = self.cache_ttl_ms;
        self.cache
            .retain(|_, (_, checked, _)| now.millis_since(*checked) <= ttl);
        self.store.sweep_expired(now);
    }
}

#[cfg(test)]
mod tests;
