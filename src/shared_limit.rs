//! The rate limit shared by every replica (`rate_limit.store = "redis"`): one GCRA state per key
//! in Redis, updated by one Lua script, so N replicas together admit what one would.
//!
//! Invariants: the pure core only ever sees the [`Outcome`]; a Redis that fails or does not
//! answer within [`STORE_TIMEOUT`] never turns a request into an error: that request is judged
//! by the replica's own limiter, counted in `jacker_gate_ratelimit_store_errors_total`, and
//! Redis is asked again after [`RETRY_AFTER_ERROR`] (or by `/readyz`), so the replica recovers by
//! itself. Keys are `jacker-gate:rl:<key>` and expire once their bucket has refilled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RedisServer;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Outcome, RateKey, RateLimit};
use crate::session::redis_conn::Conn;

/// The bound of one Redis call: a request waits at most this long for the shared budget.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a replica judges by its own budget after Redis failed, before it asks again: a
/// down Redis then costs one timeout per second, not one per request.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// How long tokens taken from Redis may wait locally to be spent; unspent ones are dropped
/// (a stricter limit, never a looser one).
const RESERVE_TTL: Duration = Duration::from_millis(250);
/// The key prefix of the buckets.
pub(crate) const KEY_PREFIX: &str = "jacker-gate:rl:";

/// GCRA over the server's clock (`TIME`, so the replicas' clocks do not matter), in µs.
/// KEYS[1]: the bucket; ARGV: the emission interval, the burst tolerance, the tokens wanted.
/// Grants as many of the wanted tokens as the bucket holds (0 when empty: then the reply's
/// second value is the µs until one token has refilled). The key expires when the bucket is
/// full again, which is the same as it not existing.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local n = math.min(want, math.floor((now + tol - tat) / e))
if n <= 0 then
  return {0, tat + e - tol - now}
end
tat = tat + n * e
redis.call('SET', KEYS[1], string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + 1)
return {n, 0}
";

/// Tokens taken from Redis and not yet spent by this replica, or the instant before which
/// Redis said the bucket holds none: until then no replica can get a token (others can only
/// push that instant later), so a limited client costs one Redis call per refill, not one per
/// request, without admitting anything Redis would refuse.
struct Reserve {
    left: u32,
    until: Instant,
    empty_until: Option<Instant>,
    /// Tokens asked of Redis by calls still in flight: a concurrent caller asks only for what
    /// the batch lacks, so the cap on `left` rarely drops any.
    pending: u32,
}

/// Tokens asked of Redis for `key` by one call in flight.
struct Pending<'a> {
    limit: &'a SharedLimit,
    key: RateKey,
    want: u32,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut reserves = self.limit.reserves.lock().expect("reserve lock");
        if let Some(r) = reserves.get_mut(&self.key) {
            r.pending = r.pending.saturating_sub(self.want);
        }
    }
}

/// The shared limit of one replica.
pub(crate) struct SharedLimit {
    conn: Conn,
    /// The script's SHA-1, hex, for `EVALSHA`.
    script_sha: String,
    /// µs between two tokens, and the burst's worth of them.
    emission_us: u64,
    tolerance_us: u64,
    batch: u32,
    reserves: Mutex<HashMap<RateKey, Reserve>>,
    /// Set while Redis fails; cleared by the first answer.
    failing: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
}

/// Tokens a replica takes per Redis call for a key it keeps seeing. Why the bound holds: every
/// admitted request spent a token the one GCRA state in Redis granted, and GCRA grants at most
/// `burst + per_second × t` over any window t; a token granted before a window and spent in it
/// can add at most `batch - 1` per replica (what it holds when the window starts). With
/// `batch - 1 ≤ burst / 50`, up to 5 replicas stay within 10% of the burst alone, let alone of
/// `burst + per_second × t`. The cap keeps a replica from holding many tokens a key may then
/// not use (dropped after [`RESERVE_TTL`], which only makes the limit stricter).
fn batch_size(burst: u32) -> u32 {
    (1 + burst / 50).min(16)
}

impl SharedLimit {
    /// The shared limit on `redis`; `None` when the limiter is off. No connection is made
    /// before the first check, so the gate starts while Redis is down.
    pub(crate) fn open(
        config: &RateLimit,
        redis: &RedisServer,
    ) -> redis::RedisResult<Option<Self>> {
        if config.per_second == 0 {
            return Ok(None);
        }
        let password = redis.password.as_ref().map(|f| f.expose());
        let conn = Conn::open(&redis.target, password, STORE_TIMEOUT)?;
        let emission_us = 1_000_000 / u64::from(config.per_second).max(1);
        let burst = config.burst.max(1);
        Ok(Some(Self {
            conn,
            script_sha: sha1_hex(SCRIPT.as_bytes()),
            emission_us: emission_us.max(1),
            tolerance_us: emission_us.max(1) * u64::from(burst),
            batch: batch_size(burst),
            reserves: Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
            retry_at: Mutex::new(None),
        }))
    }

    /// Takes one token of `key`: from this replica's reserve, else from Redis, else (Redis
    /// failing) from `local`.
    pub(crate) async fn check(&self, key: RateKey, local: &Limiter, metrics: &Metrics) -> Outcome {
        let now = Instant::now();
        if self.backing_off(now) {
            return local.check(key);
        }
        let want = {
            let mut reserves = self.reserves.lock().expect("reserve lock");
            match reserves.get_mut(&key) {
                Some(r) if r.left > 0 && r.until > now => {
                    r.left -= 1;
                    return Outcome::Allowed;
                }
                Some(Reserve {
                    empty_until: Some(at),
                    ..
                }) if *at > now => {
                    return Outcome::Limited {
                        retry_after_secs: whole_secs((*at - now).as_micros()),
                    };
                }
                // A key this replica saw within the reserve's lifetime is busy here: a batch.
                Some(r) if r.until > now => {
                    let want = self.batch.saturating_sub(r.left + r.pending).max(1);
                    r.pending += want;
                    want
                }
                Some(r) => {
                    r.pending += 1;
                    1
                }
                None => {
                    reserves.insert(
                        key,
                        Reserve {
                            left: 0,
                            until: now,
                            empty_until: None,
                            pending: 1,
                        },
                    );
                    1
                }
            }
        };
        // Released however the call ends, also when the request is dropped mid-call.
        let pending = Pending {
            limit: self,
            key,
            want,
        };
        let reply = self.take(key, want).await;
        drop(pending);
        match reply {
            Ok((granted, wait_us)) => {
                let now = Instant::now();
                let mut reserves = self.reserves.lock().expect("reserve lock");
                let r = reserves.entry(key).or_insert(Reserve {
                    left: 0,
                    until: now,
                    empty_until: None,
                    pending: 0,
                });
                if r.until <= now {
                    r.left = 0;
                }
                if granted == 0 {
                    let at = now + Duration::from_micros(wait_us);
                    r.empty_until = Some(at);
                    r.until = r.until.max(at);
                    return Outcome::Limited {
                        retry_after_secs: whole_secs(u128::from(wait_us)),
                    };
                }
                // Concurrent calls for one key add up, but never past `batch - 1` held: the
                // bound of `batch_size` counts on it (the excess is dropped: stricter only).
                let extra = u32::try_from(granted - 1).unwrap_or(u32::MAX);
                r.left = r.left.saturating_add(extra).min(self.batch - 1);
                r.until = now + RESERVE_TTL;
                r.empty_until = None;
                Outcome::Allowed
            }
            Err(e) => {
                metrics.ratelimit_store_errors.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "shared rate limit: Redis failed; each replica uses its own budget until it answers");
                }
                *self.retry_at.lock().expect("retry lock") = Some(now + RETRY_AFTER_ERROR);
                local.check(key)
            }
        }
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.failing.load(Ordering::Relaxed)
            && self
                .retry_at
                .lock()
                .expect("retry lock")
                .is_some_and(|at| now < at)
    }

    /// Runs the script (`EVALSHA`, `EVAL` when Redis does not hold it yet), within the timeout.
    async fn take(&self, key: RateKey, want: u32) -> redis::RedisResult<(u64, u64)> {
        let name = format!("{KEY_PREFIX}{:032x}", key.id());
        let call = |cmd: &str, first: &str| {
            let mut c = redis::cmd(cmd);
            c.arg(first)
                .arg(1)
                .arg(&name)
                .arg(self.emission_us)
                .arg(self.tolerance_us)
                .arg(want);
            c
        };
        let run = async {
            let hash = self.script_sha.as_str();
            match self.conn.query(&call("EVALSHA", hash)).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.conn.query(&call("EVAL", SCRIPT)).await
                }
                other => other,
            }
        };
        let reply = tokio::time::timeout(STORE_TIMEOUT, run)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "Redis did not answer in time",
                ))
            })??;
        self.failing.store(false, Ordering::Relaxed);
        Ok(reply)
    }

    /// Whether the last call failed (the replica judges by its own budget). When Redis may be
    /// asked again, a `PING` says whether it is back, so an idle replica recovers too.
    pub(crate) async fn falling_back(&self) -> bool {
        if !self.failing.load(Ordering::Relaxed) || self.backing_off(Instant::now()) {
            return self.failing.load(Ordering::Relaxed);
        }
        let ping = tokio::time::timeout(
            STORE_TIMEOUT,
            self.conn.query::<String>(&redis::cmd("PING")),
        )
        .await;
        if matches!(ping, Ok(Ok(_))) {
            self.failing.store(false, Ordering::Relaxed);
        }
        self.failing.load(Ordering::Relaxed)
    }

    /// Drops reserves past their lifetime; call periodically.
    pub(crate) fn cleanup(&self) {
        let now = Instant::now();
        self.reserves
            .lock()
            .expect("reserve lock")
            .retain(|_, r| r.until > now || r.empty_until.is_some_and(|at| at > now));
    }
}

/// Whole seconds for `Retry-After`, at least 1.
fn whole_secs(micros: u128) -> u64 {
    u64::try_from(micros.div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// SHA-1 in hex: the name `EVALSHA` knows a script by (Redis's choice; not a security use).
fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest as _;
    sha1::Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_standard_vectors() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            sha1_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn batches_stay_small_against_the_burst() {
        assert_eq!(batch_size(1), 1);
        assert_eq!(batch_size(100), 3);
        assert_eq!(batch_size(10_000), 16);
        for burst in [1, 10, 49, 50, 100, 999, 5000] {
            assert!(5 * (batch_size(burst) - 1) <= burst / 10, "burst {burst}");
        }
    }
}
