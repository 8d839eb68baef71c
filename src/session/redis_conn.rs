//! How the Redis store reaches Redis: one server, the master a Sentinel set names, or a Cluster,
//! each through redis-rs's own support (`ConnectionManager`, `sentinel`, `cluster_async`).
//!
//! Invariants: every call is bounded (the connection and response timeouts, and on Sentinel and
//! Cluster an overall bound around lookups, which have no timeout of their own); a Sentinel
//! master connection that fails, times out or answers `READONLY` (the old master after a
//! failover) is dropped, and the next call asks the Sentinels again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, RedisResult,
};

use crate::config::{HostPort, RedisTarget};

/// One of the three ways to reach Redis.
pub(crate) enum Conn {
    Single {
        client: Client,
        conn: ConnectionManager,
    },
    Sentinel(Arc<SentinelMaster>),
    Cluster {
        conn: ClusterConnection,
        /// The seed nodes, for the pub/sub connection: a Cluster broadcasts every PUBLISH to
        /// all its nodes, so one subscription on any node hears every sign-out.
        seeds: Vec<Client>,
        timeout: Duration,
    },
}

/// The master of a Sentinel set, looked up again after it failed.
pub(crate) struct SentinelMaster {
    /// A lookup at a time: the others then reuse the connection it made.
    sentinel: tokio::sync::Mutex<Sentinel>,
    service: String,
    node: SentinelNodeConnectionInfo,
    config: AsyncConnectionConfig,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

/// `host:port` with the user, password and database of the data nodes.
fn node_info(hp: &HostPort, settings: &RedisConnectionInfo) -> RedisResult<ConnectionInfo> {
    Ok(ConnectionAddr::Tcp(hp.host.clone(), hp.port)
        .into_connection_info()?
        .set_redis_settings(settings.clone()))
}

fn settings(username: Option<&str>, password: Option<&str>, db: i64) -> RedisConnectionInfo {
    let mut s = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = username {
        s = s.set_username(u);
    }
    if let Some(p) = password {
        s = s.set_password(p);
    }
    s
}

/// The whole of a Sentinel or Cluster call, lookups included: a lookup, a connection and the
/// command, each bounded by `timeout` where redis-rs bounds them.
fn overall(timeout: Duration) -> Duration {
    timeout * 3
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

impl Conn {
    /// A connection to `target`; none is made before the first call, so the gate starts (and
    /// answers 503 on login routes) while Redis is down.
    pub(crate) fn open(
        target: &RedisTarget,
        password: Option<&str>,
        timeout: Duration,
    ) -> RedisResult<Conn> {
        match target {
            RedisTarget::Single(url) => {
                let mut info: ConnectionInfo = url.as_str().into_connection_info()?;
                if let Some(pw) = password {
                    let settings = info.redis_settings().clone().set_password(pw);
                    info = info.set_redis_settings(settings);
                }
                let client = Client::open(info)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(Conn::Single { client, conn })
            }
            RedisTarget::Sentinel {
                username,
                sentinels,
                service,
                db,
            } => {
                // The Sentinels get the same user and password as the data nodes (README).
                let on_sentinel = settings(username.as_deref(), password, 0);
                let infos = sentinels
                    .iter()
                    .map(|hp| node_info(hp, &on_sentinel))
                    .collect::<RedisResult<Vec<_>>>()?;
                let on_data = settings(username.as_deref(), password, i64::from(*db));
                Ok(Conn::Sentinel(Arc::new(SentinelMaster {
                    sentinel: tokio::sync::Mutex::new(Sentinel::build(infos)?),
                    service: service.clone(),
                    node: SentinelNodeConnectionInfo::default().set_redis_connection_info(on_data),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout)),
                    current: Mutex::new(None),
                    timeout,
                })))
            }
            RedisTarget::Cluster { username, nodes } => {
                let on_node = settings(username.as_deref(), password, 0);
                let infos = nodes
                    .iter()
                    .map(|hp| node_info(hp, &on_node))
                    .collect::<RedisResult<Vec<_>>>()?;
                let seeds = infos
                    .iter()
                    .map(|i| Client::open(i.clone()))
                    .collect::<RedisResult<Vec<_>>>()?;
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                let conn = client.get_pending_async_connection_with_config(config);
                Ok(Conn::Cluster {
                    conn,
                    seeds,
                    timeout,
                })
            }
        }
    }

    /// Runs `cmd` (a single-key command, or one any node answers) and returns its reply.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single { conn, .. } => match cmd.query_async(&mut conn.clone()).await {
                // The server restarted (or a proxy cut the connection) since the last command:
                // the connection manager reconnects, and the command goes once more on the new
                // connection rather than failing the request (see `SentinelMaster::query` on why
                // every command may run twice).
                Err(e) if retry_on_new_connection(&e) => cmd.query_async(&mut conn.clone()).await,
                answer => answer,
            },
            Conn::Sentinel(master) => {
                tokio::time::timeout(overall(master.timeout), master.query(cmd))
                    .await
                    .unwrap_or_else(|_| {
                        master.forget();
                        Err(timed_out())
                    })
            }
            Conn::Cluster { conn, timeout, .. } => {
                tokio::time::timeout(overall(*timeout), cmd.query_async(&mut conn.clone()))
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            }
        }
    }

    /// A pub/sub connection, and where it goes (on Sentinel: the master it was made to, which
    /// [`Conn::moved`] compares with the one the Sentinels name now).
    pub(super) async fn pubsub(&self) -> RedisResult<(PubSub, Option<ConnectionAddr>)> {
        match self {
            Conn::Single { client, .. } => Ok((client.get_async_pubsub().await?, None)),
            Conn::Sentinel(master) => {
                let bound = overall(master.timeout);
                tokio::time::timeout(bound, async {
                    let client = master.lookup().await?;
                    let addr = client.get_connection_info().addr().clone();
                    Ok((client.get_async_pubsub().await?, Some(addr)))
                })
                .await
                .unwrap_or_else(|_| Err(timed_out()))
            }
            Conn::Cluster { seeds, timeout, .. } => {
                let mut last = None;
                for seed in seeds {
                    match tokio::time::timeout(*timeout, seed.get_async_pubsub()).await {
                        Ok(Ok(pubsub)) => return Ok((pubsub, None)),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => last = Some(timed_out()),
                    }
                }
                Err(last.unwrap_or_else(timed_out))
            }
        }
    }

    /// Whether the Sentinels now name another master than `addr` (a failover the pub/sub
    /// connection did not notice: the old master may keep it open as a replica). A lookup that
    /// fails says nothing and counts as not moved.
    pub(super) async fn moved(&self, addr: &ConnectionAddr) -> bool {
        let Conn::Sentinel(master) = self else {
            return false;
        };
        match tokio::time::timeout(overall(master.timeout), master.lookup()).await {
            Ok(Ok(client)) => client.get_connection_info().addr() != addr,
            _ => false,
        }
    }
}

/// Whether `e` says the command never reached a working master: a demoted node, or a
/// connection that was closed under it.
fn retry_on_new_connection(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY") || e.is_connection_dropped() || e.is_io_error()
}

impl SentinelMaster {
    /// A client for the master the Sentinels name now (redis-rs checks its `ROLE`).
    async fn lookup(&self) -> RedisResult<Client> {
        let mut sentinel = self.sentinel.lock().await;
        sentinel
            .async_master_for(&self.service, Some(&self.node))
            .await
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another call may have looked it up while this one waited for the lock.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let client = sentinel
            .async_master_for(&self.service, Some(&self.node))
            .await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.current.lock().expect("master connection") = Some(conn.clone());
        Ok(conn)
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current.lock().expect("master connection").clone()
    }

    fn forget(&self) {
        *self.current.lock().expect("master connection") = None;
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.query_once(cmd).await {
            // A failover demoted the node this replica was talking to (READONLY), or Sentinel
            // closed the connections to it when it did (a dropped connection): the command goes
            // again, once, to the master the Sentinels name now, so the first request after a
            // failover does not answer 503. Every command the gate sends may run twice: they
            // set or delete whole keys, and a GETDEL that ran before its answer was lost only
            // makes the second find nothing (the login then fails, closed).
            Err(e) if retry_on_new_connection(&e) => self.query_once(cmd).await,
            answer => answer,
        }
    }

    async fn query_once<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.connection().await?;
        let answer = cmd.query_async(&mut conn).await;
        if let Err(e) = &answer {
            // READONLY: a failover demoted this node; anything else may be a dead master.
            if e.code() == Some("READONLY")
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.is_timeout()
            {
                self.forget();
            }
        }
        answer
    }
}
