//! The Redis store: sessions shared by every replica, sign-out broadcast over pub/sub; on one
//! Redis, a Sentinel set or a Cluster (`redis_conn`).
//!
//! Invariants: every call is bounded by the connection and response timeouts (a hung Redis
//! makes calls fail, never hang); connections are made again by themselves; every command
//! names one key (so each works unchanged on a Cluster, whatever slot the key is in); a login
//! record is taken with `GETDEL`, so a `state` works once even across replicas; after a pub/sub
//! reconnect, or a failover the pub/sub connection did not see, every replica drops its whole
//! session cache, since broadcasts may have been missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::redis_conn::Conn;
use super::{PendingLogin, SessionRecord, SessionStore, StoreError};
use crate::clock::Now;
use crate::config::RedisTarget;

const SESSION_PREFIX: &str = "jacker-gate:session:";
const LOGIN_PREFIX: &str = "jacker-gate:login:";
/// The channel sign-outs are published on; the message is the session's store key.
pub const REVOKE_CHANNEL: &str = "jacker-gate:revoked";
/// How often a subscriber on a Sentinel master asks whether the master moved: sign-outs
/// published on a new master reach a subscriber left on the old one only while it replicates.
const MASTER_CHECK: Duration = Duration::from_secs(1);

/// Sessions and pending logins in Redis, with Redis's own TTLs (whole seconds, at least 1); the
/// `now` each call is given is not used, since Redis expires keys by its own clock.
pub struct RedisStore {
    conn: Conn,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl RedisStore {
    /// A store on `target`, with `password` when given; every call and (re)connection is
    /// bounded by `timeout`. Connects lazily: the gate starts (and answers 503 on login routes)
    /// while Redis is down.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when redis-rs refuses the target.
    pub async fn connect(
        target: &RedisTarget,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let conn = Conn::open(target, password, timeout)
            .map_err(|e| StoreError::Unavailable(format!("bad redis_url: {e}")))?;
        Ok(Arc::new(Self { conn }))
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
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(body).arg("EX").arg(ttl.as_secs().max(1));
        self.conn.query::<()>(&cmd).await.map_err(unavailable)
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
            let cmd = redis::cmd("GET")
                .arg(format!("{SESSION_PREFIX}{key}"))
                .clone();
            let raw = self.conn.query(&cmd).await.map_err(unavailable)?;
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
            let del = redis::cmd("DEL")
                .arg(format!("{SESSION_PREFIX}{key}"))
                .clone();
            self.conn.query::<()>(&del).await.map_err(unavailable)?;
            let publish = redis::cmd("PUBLISH").arg(REVOKE_CHANNEL).arg(key).clone();
            self.conn.query::<()>(&publish).await.map_err(unavailable)
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
            let cmd = redis::cmd("GETDEL")
                .arg(format!("{LOGIN_PREFIX}{state}"))
                .clone();
            let raw = self.conn.query(&cmd).await.map_err(unavailable)?;
            from_json(raw)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.conn
                .query::<String>(&redis::cmd("PING"))
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn watch_revocations(self: Arc<Self>, evict: super::Evict) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match self.conn.pubsub().await {
                    Ok((mut pubsub, origin)) => match pubsub.subscribe(REVOKE_CHANNEL).await {
                        Ok(()) => {
                            if failures > 0 {
                                info!("session revocation channel reconnected");
                            }
                            failures = 0;
                            // Broadcasts sent while disconnected are lost: start clean.
                            evict(None);
                            let mut messages = pubsub.on_message();
                            let mut check = tokio::time::interval(MASTER_CHECK);
                            loop {
                                tokio::select! {
                                    msg = messages.next() => match msg {
                                        Some(msg) => {
                                            if let Ok(key) = msg.get_payload::<String>() {
                                                evict(Some(&key));
                                            }
                                        }
                                        None => break,
                                    },
                                    _ = check.tick(), if origin.is_some() => {
                                        let moved = match &origin {
                                            Some(addr) => self.conn.moved(addr).await,
                                            None => false,
                                        };
                                        if moved {
                                            info!("Redis master moved; subscribing to the new one");
                                            break;
                                        }
                                    }
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
