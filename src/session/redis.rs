//! The Redis store: sessions shared by every replica, sign-out broadcast over pub/sub.
//!
//! Invariants: every call is bounded by the connection and response timeouts (a hung Redis
//! makes calls fail, never hang); the connection manager reconnects by itself; a login record
//! is taken with `GETDEL`, so a `state` works once even across replicas; after a pub/sub
//! reconnect every replica drops its whole session cache, since broadcasts may have been missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tracing::{info, warn};

use super::{PendingLogin, SessionRecord, SessionStore, StoreError};
use crate::clock::Now;

const SESSION_PREFIX: &str = "jacker-gate:session:";
const LOGIN_PREFIX: &str = "jacker-gate:login:";
/// The channel sign-outs are published on; the message is the session's store key.
pub const REVOKE_CHANNEL: &str = "jacker-gate:revoked";

/// Sessions and pending logins in Redis, with Redis's own TTLs (whole seconds, at least 1); the
/// `now` each call is given is not used, since Redis expires keys by its own clock.
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl RedisStore {
    /// A store on `url` (`redis://` or `rediss://`), with `password` when given; every call
    /// and (re)connection is bounded by `timeout`. Connects lazily: the gate starts (and
    /// answers 503 on login routes) while Redis is down.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when `url` does not parse as a Redis URL.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let mut info: redis::ConnectionInfo = url.parse().map_err(|e: redis::RedisError| {
            StoreError::Unavailable(format!("bad redis_url: {e}"))
        })?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        Ok(Arc::new(Self { client, conn }))
    }

    /// Writes `value` as JSON under `key`, expiring after `ttl` (at least 1 s: Redis takes
    /// whole seconds, and 0 would be an error).
    async fn put_json(
        &self,
        key: String,
        value: &impl serde::Serialize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(value).map_err(corrupt)?;
        let mut c = self.conn.clone();
        c.set_ex::<_, _, ()>(key, body, ttl.as_secs().max(1))
            .await
            .map_err(unavailable)
    }
}

/// A stored JSON value, if there was one.
fn from_json<T: serde::de::DeserializeOwned>(
    raw: Option<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    raw.map(|b| serde_json::from_slice(&b).map_err(corrupt))
        .transpose()
}

impl SessionStore for RedisStore {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
        _now: Now,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let raw = c
                .get(format!("{SESSION_PREFIX}{key}"))
                .await
                .map_err(unavailable)?;
            from_json(raw)
        })
    }

    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
        _now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_json(format!("{SESSION_PREFIX}{key}"), record, ttl))
    }

    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            c.del::<_, ()>(format!("{SESSION_PREFIX}{key}"))
                .await
                .map_err(unavailable)?;
            c.publish::<_, _, ()>(REVOKE_CHANNEL, key)
                .await
                .map_err(unavailable)
        })
    }

    fn put_pending_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a PendingLogin,
        ttl: Duration,
        _now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_json(format!("{LOGIN_PREFIX}{state}"), record, ttl))
    }

    fn take_pending_login<'a>(
        &'a self,
        state: &'a str,
        _now: Now,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let raw = c
                .get_del(format!("{LOGIN_PREFIX}{state}"))
                .await
                .map_err(unavailable)?;
            from_json(raw)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn watch_revocations(self: Arc<Self>, evict: super::Evict) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match self.client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(REVOKE_CHANNEL).await {
                        Ok(()) => {
                            if failures > 0 {
                                info!("session revocation channel reconnected");
                            }
                            failures = 0;
                            // Broadcasts sent while disconnected are lost: start clean.
                            evict(None);
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                if let Ok(key) = msg.get_payload::<String>() {
                                    evict(Some(&key));
                                }
                            }
                        }
                        Err(e) => {
                            if failures == 0 {
                                warn!(error = %e, "cannot subscribe to session revocations");
                            }
                        }
                    },
                    Err(e) => {
                        if failures == 0 {
                            warn!(error = %e, "cannot connect to Redis for session revocations");
                        }
                    }
                }
                failures += 1;
                evict(None);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}
