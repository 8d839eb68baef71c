//! The rate limit shared by every replica (`rate_limit.store = "redis"`): one GCRA state per key
//! in Redis, updated by one Lua script, so N replicas together admit what one would.
//!
//! The hot path does not wait on Redis for most requests: a replica admits a key it believes
//! well below its limit on loan and charges the bucket afterwards (within a second), and one
//! batcher task sends
//! what every request of the replica needs from Redis in one script call per batch (per slot
//! group on a Cluster), so the number of Redis calls follows the load's round trips, not its
//! requests. [`key`] holds the per-key rules and the accuracy bound.
//!
//! Every request also takes a token from the replica's own limiter first (the same `per_second`
//! and `burst`): one replica never needs more than the whole budget, and when Redis fails the
//! fallback goes on from what the replica's clients already spent instead of a full burst.
//!
//! Invariants: the pure core only ever sees the [`Outcome`]; a Redis that fails or does not
//! answer within [`STORE_TIMEOUT`] never turns a request into an error: a request waiting on it is
//! judged by the replica's own limiter, the failure is counted in
//! `jacker_gate_ratelimit_store_errors_total`, and Redis is asked again after
//! [`RETRY_AFTER_ERROR`] (or by `/readyz`), so the replica recovers by itself. Keys are
//! `jacker-gate:rl:{<shard>}<key>` and expire once their bucket has refilled.

mod key;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::config::RedisServer;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Outcome, RateKey, RateLimit};
use crate::session::redis_conn::Conn;
use key::{KeyState, Params, Reply, Take};

/// The bound of one Redis call: a request waits at most this long for the shared budget (twice,
/// when a batch was already in flight as it arrived).
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a replica judges by its own budget after Redis failed, before it asks again: a
/// down Redis then costs one timeout per second, not one per request.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// The key prefix of the buckets.
pub(crate) const KEY_PREFIX: &str = "jacker-gate:rl:";
/// Keys per script call: bounds how long one call keeps Redis busy (about 1 µs per key).
const MAX_BATCH: usize = 128;
/// Hash-tag shards: on a Cluster, keys of one shard share a slot, so a batch takes one script
/// call per shard present in it; 16 spread over any number of masters up to 16.
const SHARDS: u128 = 16;
/// Keys held beyond which no loan is forgiven (each forgiven key is kept for a while).
const MAX_KEYS_FORGIVING: usize = 1 << 18;
/// How often forgettable keys are dropped.
const SWEEP: Duration = Duration::from_secs(1);
/// How long the batcher sleeps when nothing is queued: loans come due at most this late.
const IDLE: Duration = Duration::from_millis(100);

/// GCRA over the server's clock (`TIME`, so the replicas' clocks do not matter), in µs.
/// KEYS: the buckets; ARGV: the emission interval, the burst tolerance, then per key the loans to
/// charge and the tokens wanted. Loans are charged whatever the bucket holds (they were admitted:
/// the debt delays what follows); then as many of the wanted tokens as the bucket holds are
/// granted. The reply is flat (nested tables cost Redis twice as much per key): per key, the
/// tokens granted and the µs the bucket's arrival time runs ahead of now. The key expires when
/// the bucket is full again, which is the same as it not existing.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local charge = tonumber(ARGV[1 + 2 * i])
  local want = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  tat = tat + charge * e
  local n = math.min(want, math.floor((now + tol - tat) / e))
  if n < 0 then n = 0 end
  tat = tat + n * e
  if tat > now then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[2 * i - 1] = n
  out[2 * i] = tat - now
end
return out
";

/// One key of this replica: its state, and the requests waiting for the next batch.
struct Entry {
    state: KeyState,
    /// Each gets `Some(outcome)`, or `None` when Redis failed (then the local budget judges).
    waiters: Vec<oneshot::Sender<Option<Outcome>>>,
}

impl Entry {
    /// A key this replica knows nothing of.
    fn new(now: Instant) -> Self {
        Entry {
            state: KeyState::new(now),
            waiters: Vec::new(),
        }
    }

    /// Whether dropping the entry changes nothing: no request waits and the state is one an
    /// unknown key would have.
    fn forgettable(&self, now: Instant, p: &Params) -> bool {
        self.waiters.is_empty() && self.state.forgettable(now, p)
    }
}

#[derive(Default)]
struct Keys {
    map: HashMap<RateKey, Entry>,
    /// Keys with loans to charge or requests waiting, in arrival order.
    queue: Vec<RateKey>,
    /// Keys that took a first uncharged loan, and when: their loans come due in this order.
    loans: VecDeque<(Instant, RateKey)>,
}

/// The shared limit of one replica.
pub(crate) struct SharedLimit {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// Whether keys must be grouped by slot (a Cluster refuses a script across slots).
    cluster: bool,
    /// The script's SHA-1, hex, for `EVALSHA`.
    script_sha: String,
    params: Params,
    /// One lock per hash-tag shard: a request, the sweep and a batch's answers hold only the
    /// shard of the key at hand, so none waits on the whole map.
    keys: Vec<Mutex<Keys>>,
    /// Wakes the batcher when the queue gains a key.
    wake: Notify,
    /// Set while Redis fails; cleared by the first answer.
    failing: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// One key of a batch: what is charged and asked.
struct Line {
    key: RateKey,
    charge: u32,
    want: u32,
}

impl SharedLimit {
    /// The shared limit on `redis`; `None` when the limiter is off. No connection is made
    /// before the first check, so the gate starts while Redis is down. Must run inside the
    /// runtime: it starts the batcher task.
    pub(crate) fn open(
        config: &RateLimit,
        redis: &RedisServer,
        metrics: Arc<Metrics>,
    ) -> redis::RedisResult<Option<Self>> {
        if config.per_second == 0 {
            return Ok(None);
        }
        let password = redis.password.as_ref().map(|f| f.expose());
        let conn = Conn::open(&redis.target, password, STORE_TIMEOUT)?;
        let inner = Arc::new(Inner {
            cluster: matches!(conn, Conn::Cluster { .. }),
            conn,
            script_sha: sha1_hex(SCRIPT.as_bytes()),
            params: Params::new(config.per_second, config.burst),
            keys: (0..SHARDS).map(|_| Mutex::new(Keys::default())).collect(),
            wake: Notify::new(),
            failing: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            metrics,
        });
        tokio::spawn(batcher(inner.clone()));
        Ok(Some(Self { inner }))
    }

    /// Takes one token of `key` from `local`, then from this replica's reserve, on loan, else
    /// from Redis by the next batch; while Redis fails, `local`'s answer stands.
    pub(crate) async fn check(&self, key: RateKey, local: &Limiter) -> Outcome {
        let inner = &self.inner;
        if let limited @ Outcome::Limited { .. } = local.check(key) {
            return limited;
        }
        let now = Instant::now();
        if inner.backing_off(now) {
            return Outcome::Allowed;
        }
        let rx = {
            let mut keys = inner.shard_of(key);
            let Keys { map, queue, loans } = &mut *keys;
            let entry = map.entry(key).or_insert_with(|| Entry::new(now));
            let rx = match entry.state.take(now, &inner.params) {
                Take::Reserve => return Outcome::Allowed,
                Take::Limited(wait) => {
                    return Outcome::Limited {
                        retry_after_secs: whole_secs(wait.as_micros()),
                    }
                }
                Take::Loan { first } => {
                    if first {
                        loans.push_back((now, key));
                    }
                    return Outcome::Allowed;
                }
                Take::LoanAndReport => None,
                Take::Ask => {
                    let (tx, rx) = oneshot::channel();
                    entry.waiters.push(tx);
                    Some(rx)
                }
            };
            if !entry.state.queued {
                entry.state.queued = true;
                queue.push(key);
            }
            rx
        };
        inner.wake.notify_one();
        let Some(rx) = rx else {
            return Outcome::Allowed;
        };
        match tokio::time::timeout(2 * STORE_TIMEOUT, rx).await {
            Ok(Ok(Some(outcome))) => outcome,
            // Redis failed: this replica's own budget, whose token the request holds.
            Ok(_) => Outcome::Allowed,
            // The batch before this request's took the whole timeout: Redis is as good as down.
            Err(_) => {
                inner.failed("no answer within two store timeouts", Instant::now());
                Outcome::Allowed
            }
        }
    }

    /// Whether the last call failed (the replica judges by its own budget). When Redis may be
    /// asked again, a `PING` says whether it is back, so an idle replica recovers too.
    pub(crate) async fn falling_back(&self) -> bool {
        let inner = &self.inner;
        if !inner.failing.load(Ordering::Relaxed) || inner.backing_off(Instant::now()) {
            return inner.failing.load(Ordering::Relaxed);
        }
        let ping = tokio::time::timeout(
            STORE_TIMEOUT,
            inner.conn.query::<String>(&redis::cmd("PING")),
        )
        .await;
        if matches!(ping, Ok(Ok(_))) {
            inner.recovered();
        }
        inner.failing.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Drops keys whose state an unknown key would have anyway, and gives the memory of a past
    /// peak back.
    fn sweep(&self) {
        let p = self.params;
        for shard in &self.keys {
            let now = Instant::now();
            let mut keys = shard.lock().expect("keys lock");
            keys.map.retain(|_, e| !e.forgettable(now, &p));
            let len = keys.map.len();
            if keys.map.capacity() > 1024 && keys.map.capacity() > 4 * len {
                keys.map.shrink_to(2 * len);
            }
        }
    }

    /// The locked shard that holds `key`.
    fn shard_of(&self, key: RateKey) -> std::sync::MutexGuard<'_, Keys> {
        self.keys[shard(key) as usize].lock().expect("keys lock")
    }

    /// Redis answered: the shared budget again, said once.
    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("shared rate limit: Redis answers again; back on the shared budget");
        }
    }

    /// Counts a failed call and has the replica judge by its own budget for a while.
    fn failed(&self, error: &str, at: Instant) {
        self.metrics.ratelimit_store_errors.inc();
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "shared rate limit: Redis failed; each replica uses its own budget until it answers");
        }
        *self.retry_at.lock().expect("retry lock") = Some(at + RETRY_AFTER_ERROR);
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.failing.load(Ordering::Relaxed)
            && self
                .retry_at
                .lock()
                .expect("retry lock")
                .is_some_and(|at| now < at)
    }

    /// Takes the queue, with the keys whose loans came due: each key's loans and wanted
    /// tokens, and its waiters.
    fn drain(&self) -> Vec<(Line, Vec<oneshot::Sender<Option<Outcome>>>)> {
        let mut lines = Vec::new();
        for shard in &self.keys {
            self.drain_shard(&mut shard.lock().expect("keys lock"), &mut lines);
        }
        lines
    }

    fn drain_shard(
        &self,
        keys: &mut Keys,
        lines: &mut Vec<(Line, Vec<oneshot::Sender<Option<Outcome>>>)>,
    ) {
        let now = Instant::now();
        let Keys { map, queue, loans } = keys;
        // Forgiven keys are remembered for a while: under a flood of addresses, charge instead.
        let may_forgive = map.len() < MAX_KEYS_FORGIVING / SHARDS as usize;
        while let Some(&(at, key)) = loans.front() {
            if at + key::LOAN_TTL > now {
                break;
            }
            loans.pop_front();
            // A key charged since (or forgotten) has nothing due, or a later entry of its own.
            let Some(entry) = map.get_mut(&key) else {
                continue;
            };
            if !entry.state.loans_due(now) {
                continue;
            }
            // A client far below its limit: its loans are forgiven, now and then.
            if may_forgive
                && entry.waiters.is_empty()
                && entry.state.forgive_loans(now, &self.params)
            {
                continue;
            }
            entry.state.queued = true;
            queue.push(key);
        }
        for key in std::mem::take(queue) {
            let Some(entry) = map.get_mut(&key) else {
                continue;
            };
            let waiters = std::mem::take(&mut entry.waiters);
            let waiting = u32::try_from(waiters.len()).unwrap_or(u32::MAX);
            let (charge, want) = entry.state.take_batch_line(waiting, &self.params);
            if charge > 0 || want > 0 {
                lines.push((Line { key, charge, want }, waiters));
            }
        }
    }

    /// Sends one group of lines (one slot on a Cluster) and settles its keys and waiters.
    async fn send(&self, group: Vec<(Line, Vec<oneshot::Sender<Option<Outcome>>>)>) {
        let lines: Vec<&Line> = group.iter().map(|(l, _)| l).collect();
        let reply = self.call(&lines).await;
        let at = Instant::now();
        match reply {
            Ok(results) if results.len() == 2 * group.len() => {
                let pairs = results.chunks_exact(2).map(|p| (p[0], p[1]));
                for ((line, waiters), (granted, ahead_us)) in group.into_iter().zip(pairs) {
                    let mut keys = self.shard_of(line.key);
                    // A key swept while its line was out is known again from this answer.
                    let entry = keys.map.entry(line.key).or_insert_with(|| Entry::new(at));
                    let reply = Reply {
                        at,
                        charged: line.charge,
                        granted: u32::try_from(granted).unwrap_or(0),
                        ahead: Duration::from_micros(ahead_us),
                    };
                    let waiting = u32::try_from(waiters.len()).unwrap_or(u32::MAX);
                    let (served, retry) = entry.state.apply(reply, waiting, &self.params);
                    for (i, w) in waiters.into_iter().enumerate() {
                        let outcome = if (i as u64) < u64::from(served) {
                            Outcome::Allowed
                        } else {
                            Outcome::Limited {
                                retry_after_secs: whole_secs(retry.as_micros()),
                            }
                        };
                        // A request that gave up (its client went away) leaves its token unused.
                        let _ = w.send(Some(outcome));
                    }
                    // Requests that queued for the next batch while this one was out take
                    // what it left in reserve now, rather than let it expire unused.
                    let ready = entry.state.take_reserve(at, entry.waiters.len());
                    for w in entry.waiters.drain(..ready) {
                        let _ = w.send(Some(Outcome::Allowed));
                    }
                    if entry.forgettable(at, &self.params) {
                        keys.map.remove(&line.key);
                    }
                }
            }
            other => {
                let error = match other {
                    Err(e) => e.to_string(),
                    Ok(r) => format!("{} numbers for {} keys", r.len(), group.len()),
                };
                self.failed(&error, at);
                for (line, waiters) in group {
                    if let Some(entry) = self.shard_of(line.key).map.get_mut(&line.key) {
                        entry.state.failed(line.charge);
                    }
                    for w in waiters {
                        let _ = w.send(None);
                    }
                }
            }
        }
    }

    /// Runs the script (`EVALSHA`, `EVAL` when Redis does not hold it yet), within the timeout.
    async fn call(&self, lines: &[&Line]) -> redis::RedisResult<Vec<u64>> {
        let p = &self.params;
        let build = |cmd: &str, first: &str| {
            let mut c = redis::cmd(cmd);
            c.arg(first).arg(lines.len());
            for l in lines {
                c.arg(key_name(l.key));
            }
            c.arg(p.emission.as_micros() as u64)
                .arg(p.tolerance.as_micros() as u64);
            for l in lines {
                c.arg(l.charge).arg(l.want);
            }
            c
        };
        let run = async {
            let hash = self.script_sha.as_str();
            match self.conn.query(&build("EVALSHA", hash)).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.conn.query(&build("EVAL", SCRIPT)).await
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
        self.recovered();
        Ok(reply)
    }
}

/// The batcher: takes what the requests queued since the last batch and sends it, one batch at a
/// time (requests arriving meanwhile join the next one). Ends once the limit is dropped.
async fn batcher(inner: Arc<Inner>) {
    let mut swept = Instant::now();
    loop {
        // Keys live about a second past their last use, so memory follows the request rate.
        if swept.elapsed() >= SWEEP {
            inner.sweep();
            swept = Instant::now();
        }
        let lines = inner.drain();
        if lines.is_empty() {
            // `notify_one` keeps a wake-up that came before this wait; the timeout lets the
            // task sweep, and see when it is the limit's last owner.
            let _ = tokio::time::timeout(IDLE, inner.wake.notified()).await;
            if Arc::strong_count(&inner) == 1 {
                return;
            }
            continue;
        }
        let mut groups: HashMap<u128, Vec<_>> = HashMap::new();
        for item in lines {
            let shard = if inner.cluster { shard(item.0.key) } else { 0 };
            groups.entry(shard).or_default().push(item);
        }
        let mut calls = Vec::new();
        for (_, mut group) in groups {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(MAX_BATCH));
                calls.push(inner.send(std::mem::replace(&mut group, rest)));
            }
        }
        futures_util::future::join_all(calls).await;
    }
}

/// The key's hash-tag shard: the top bits of a multiplicative hash of all 128 bits (an IPv6
/// key is a /64 whose low half is zero, so the low bits alone would put every one in shard 0).
fn shard(key: RateKey) -> u128 {
    let id = key.id();
    let folded = (id as u64) ^ ((id >> 64) as u64);
    u128::from(folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) % SHARDS
}

/// `jacker-gate:rl:{<shard>}<key>`: the braces are Redis Cluster's hash tag, so keys of one
/// shard share a slot and one script call.
fn key_name(key: RateKey) -> String {
    format!("{KEY_PREFIX}{{{:x}}}{:032x}", shard(key), key.id())
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
    fn keys_of_every_kind_spread_over_the_shards() {
        use std::collections::HashSet;
        let limiter = Limiter::new(&RateLimit {
            ipv6_prefix: 64,
            ..RateLimit::default()
        });
        let shards =
            |keys: Vec<RateKey>| -> HashSet<u128> { keys.into_iter().map(shard).collect() };
        let v6: Vec<RateKey> = (0..200u16)
            .filter_map(|i| limiter.ip_key(format!("2001:db8:{i:x}::1").parse().unwrap()))
            .collect();
        let v4: Vec<RateKey> = (0..200u8)
            .filter_map(|i| limiter.ip_key(format!("198.51.100.{i}").parse().unwrap()))
            .collect();
        let users: Vec<RateKey> = (0..200)
            .map(|i| limiter.user_key(&format!("user{i}@example.com")))
            .collect();
        for (kind, keys) in [("IPv6 /64", v6), ("IPv4", v4), ("user", users)] {
            assert_eq!(
                shards(keys).len(),
                SHARDS as usize,
                "{kind} keys use every shard"
            );
        }
        let name = key_name(limiter.ip_key("2001:db8::1".parse().unwrap()).unwrap());
        assert!(name.starts_with("jacker-gate:rl:{"), "{name}");
    }

    #[test]
    fn sha1_matches_the_standard_vectors() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            sha1_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }
}
