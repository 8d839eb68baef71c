//! The CrowdSec LAPI client: keeps the decision table in sync (stream mode) or asks per IP
//! with a short-lived cache (live mode), and answers "what does CrowdSec say about this IP".
//!
//! Invariants: a lookup never waits for a sync (the table is swapped in whole); while the LAPI
//! is unreachable the last known decisions stay enforced; with `fail_closed` an answer older
//! than `max_staleness` (or none yet) denies; one log line per failure streak, and the API key
//! is never logged (it lives only in a sensitive header value).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::HeaderValue;
use tracing::{info, warn};

use super::stream::{parse_live, parse_stream};
use super::table::DecisionTable;
use crate::clock::{millis, Clock, Now};
use crate::config::{Crowdsec, CrowdsecMode};
use crate::decision::CrowdsecState;
use crate::metrics::Metrics;

/// `User-Agent` the LAPI sees (CrowdSec lists bouncers by it).
pub(crate) const USER_AGENT: &str =
    concat!("crowdsec-jacker-gate-bouncer/v", env!("CARGO_PKG_VERSION"));

/// Live-mode answers kept at most; beyond it answers are not cached (a flood of distinct
/// addresses must not grow memory without bound).
const LIVE_CACHE_MAX: usize = 100_000;
/// Live-mode lookups in flight at once. A flood of fresh addresses (an IPv6 /64 holds 2^64)
/// must not turn into a flood on the LAPI; beyond this a lookup counts as failed.
const LIVE_IN_FLIGHT: usize = 64;
/// Largest LAPI answer read: a startup stream of 1M decisions is ~140 MB of JSON.
const MAX_STREAM_BODY: usize = 256 << 20;
const MAX_LIVE_BODY: usize = 1 << 20;
/// How often expired decisions (stream) or cached answers (live) are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// A delta is swapped in in this many steps, so at most this share of the table is copied at
/// once.
const APPLY_PARTS: usize = 8;

/// Why a LAPI request failed. Messages are written for the operator and never hold the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LapiError {
    #[error("cannot reach the LAPI: {0}")]
    Transport(String),
    #[error("the LAPI refused the bouncer key (HTTP 403): check crowdsec.api_key_file against `cscli bouncers list`")]
    Forbidden,
    #[error("the LAPI refused the bouncer (HTTP 403): with a client certificate CrowdSec authenticates by its OU (api.server.tls.bouncers_allowed_ou), not the API key")]
    ForbiddenCertificate,
    #[error("the LAPI answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Body(#[from] super::stream::BadBody),
    #[error("cannot set up the LAPI client: {0}")]
    Setup(String),
    #[error("the LAPI answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("too many live lookups in flight")]
    Busy,
}

/// The CrowdSec bouncer: the decision table (stream mode) or the live cache, the LAPI client,
/// and the worker thread that parses answers and builds tables.
pub(crate) struct Bouncer {
    mode: CrowdsecMode,
    fail_closed: bool,
    max_staleness_ms: u64,
    update_interval: Duration,
    resync_interval: Duration,
    live_timeout: Duration,
    table: ArcSwap<DecisionTable>,
    /// Unix milliseconds of the last successful LAPI answer; 0 = never.
    last_success_ms: AtomicU64,
    /// Unix seconds of the last "decisions skipped" log line (at most one a minute).
    skipped_logged: AtomicU64,
    live_cache: DashMap<IpAddr, (Option<super::Remediation>, u64), foldhash::fast::RandomState>,
    client: reqwest::Client,
    live_slots: tokio::sync::Semaphore,
    table_worker: TableWorker,
    client_cert: bool,
    base: url::Url,
    key: HeaderValue,
    metrics: Arc<Metrics>,
}

impl Bouncer {
    /// Builds the client from config and starts the table-building thread; `None` when
    /// CrowdSec is off. The key and TLS material were parsed by the config loader.
    ///
    /// # Errors
    /// [`LapiError::Setup`] when the HTTP client cannot be built or the thread cannot start.
    pub(crate) fn new(
        config: &Crowdsec,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, LapiError> {
        let Some(lapi) = &config.lapi else {
            return Ok(None);
        };
        let base = &lapi.url;
        let mut key = HeaderValue::from_str(lapi.api_key.expose()).map_err(|_| {
            LapiError::Setup("the API key holds characters not allowed in a header".into())
        })?;
        key.set_sensitive(true);

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // A redirect would carry X-Api-Key to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90));
        if !lapi.roots.is_empty() {
            // A configured CA is the only one trusted for the LAPI.
            builder = builder.tls_built_in_root_certs(false);
            for cert in &lapi.roots {
                builder = builder.add_root_certificate(cert.clone());
            }
        }
        if let Some(id) = &lapi.identity {
            builder = builder.identity(id.clone());
        }
        let client = builder
            .build()
            .map_err(|e| LapiError::Setup(e.to_string()))?;
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(Some(Arc::new(Self {
            mode: config.mode,
            fail_closed: config.fail_closed,
            max_staleness_ms: u64::try_from(config.max_staleness.as_millis()).unwrap_or(u64::MAX),
            update_interval: config.update_interval,
            resync_interval: config.resync_interval,
            live_timeout: config.live_timeout,
            table: ArcSwap::from_pointee(DecisionTable::default()),
            last_success_ms: AtomicU64::new(0),
            skipped_logged: AtomicU64::new(0),
            live_cache: DashMap::default(),
            client,
            live_slots: tokio::sync::Semaphore::new(LIVE_IN_FLIGHT),
            table_worker: TableWorker::start()?,
            client_cert: lapi.identity.is_some(),
            base,
            key,
            metrics,
        })))
    }

    /// Whether a first sync (stream) or probe (live) has succeeded, and, with `fail_closed`,
    /// the last one lies within `max_staleness` of `now`.
    pub(crate) fn ready(&self, now: Now) -> bool {
        let last = self.last_success_ms.load(Ordering::Relaxed);
        last != 0 && !(self.fail_closed && self.stale(last, now))
    }

    /// Whether the last successful LAPI answer (Unix ms, 0 for none) is older than
    /// `max_staleness` at `now`.
    fn stale(&self, last_ms: u64, now: Now) -> bool {
        last_ms == 0 || now.millis_since(Now::from_unix_millis(last_ms)) > self.max_staleness_ms
    }

    /// Records a successful LAPI answer received at `now`.
    fn synced(&self, now: Now) {
        self.last_success_ms
            .store(now.unix_millis(), Ordering::Relaxed);
    }

    /// What CrowdSec says about `ip` (canonical) at `now`: decisions that have expired by
    /// `now` no longer count, and with `fail_closed` an answer older than `max_staleness`
    /// is [`CrowdsecState::Unavailable`]. Stream mode never awaits anything; live mode may ask
    /// the LAPI (bounded by `live_timeout`).
    pub(crate) async fn check(&self, ip: IpAddr, now: Now) -> CrowdsecState {
        let now_ms = now.unix_millis();
        match self.mode {
            CrowdsecMode::Stream => {
                if let Some(kind) = self.table.load().lookup(ip, now.unix_secs_u32()) {
                    return CrowdsecState::Decided(kind);
                }
                if self.fail_closed && self.stale(self.last_success_ms.load(Ordering::Relaxed), now)
                {
                    return CrowdsecState::Unavailable;
                }
                CrowdsecState::Clear
            }
            CrowdsecMode::Live => {
                if let Some(hit) = self.live_cache.get(&ip) {
                    let (kind, expires_ms) = *hit;
                    if expires_ms > now_ms {
                        return kind.map_or(CrowdsecState::Clear, CrowdsecState::Decided);
                    }
                }
                let result = match self.live_slots.try_acquire() {
                    Ok(_permit) => self.live_lookup(ip, now.unix_secs_u32()).await,
                    Err(_) => Err(LapiError::Busy),
                };
                match result {
                    Ok(kind) => {
                        self.synced(now);
                        if self.live_cache.len() >= LIVE_CACHE_MAX {
                            self.live_cache.retain(|_, (_, exp)| *exp > now_ms);
                        }
                        if self.live_cache.len() < LIVE_CACHE_MAX {
                            let expires = now.after(self.update_interval).unix_millis();
                            self.live_cache.insert(ip, (kind, expires));
                        }
                        kind.map_or(CrowdsecState::Clear, CrowdsecState::Decided)
                    }
                    Err(e) => {
                        self.metrics.crowdsec_sync_errors.inc();
                        tracing::debug!(error = %e, "crowdsec live lookup failed");
                        if self.fail_closed {
                            CrowdsecState::Unavailable
                        } else {
                            CrowdsecState::Clear
                        }
                    }
                }
            }
        }
    }

    async fn get(
        &self,
        path_and_query: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<bytes::Bytes, LapiError> {
        let url = self
            .base
            .join(path_and_query)
            .map_err(|e| LapiError::Setup(e.to_string()))?;
        let resp = self
            .client
            .get(url)
            .header("X-Api-Key", self.key.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| LapiError::Transport(crate::error_chain(&e)))?;
        match resp.status().as_u16() {
            200 => {
                if resp.content_length().is_some_and(|n| n > max_body as u64) {
                    return Err(LapiError::TooLarge(max_body));
                }
                let mut resp = resp;
                // Sized once when the length is known: growing by doubling would leave a trail
                // of freed buffers that the allocator keeps resident.
                let hint = resp.content_length().map_or(0, |n| n as usize);
                let mut body = bytes::BytesMut::with_capacity(hint);
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| LapiError::Transport(crate::error_chain(&e)))?
                {
                    if body.len() + chunk.len() > max_body {
                        return Err(LapiError::TooLarge(max_body));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            }
            403 if self.client_cert => Err(LapiError::ForbiddenCertificate),
            403 => Err(LapiError::Forbidden),
            s => Err(LapiError::Status(s)),
        }
    }

    async fn live_lookup(
        &self,
        ip: IpAddr,
        now: u32,
    ) -> Result<Option<super::Remediation>, LapiError> {
        let body = self
            .get(
                &format!("v1/decisions?ip={ip}"),
                self.live_timeout,
                MAX_LIVE_BODY,
            )
            .await?;
        Ok(parse_live(&body, now)?)
    }

    /// Runs until the process ends: stream sync (or live-mode probe and cache cleanup) every
    /// `update_interval`, each stream request bounded by `timeout`. `clock` dates each answer
    /// (staleness, expiry of the decisions it brings).
    pub(crate) async fn run(self: Arc<Self>, timeout: Duration, clock: Arc<dyn Clock>) {
        let mut failures: u64 = 0;
        let mut last_error = String::new();
        let mut need_startup = true;
        let mut last_sweep = clock.now();
        let mut last_full = std::time::Instant::now();
        loop {
            // A full answer now and then: the LAPI can leave a decision out of every delta (one
            // committed while a pull was being answered), and only `startup=true` brings it.
            if !self.resync_interval.is_zero() && last_full.elapsed() >= self.resync_interval {
                need_startup = true;
            }
            let full = need_startup;
            let result = match self.mode {
                CrowdsecMode::Stream => self.sync_once(need_startup, timeout, clock.as_ref()).await,
                CrowdsecMode::Live => self.probe(clock.as_ref()).await,
            };
            if full && result.is_ok() {
                last_full = std::time::Instant::now();
            }
            // Read after the answer arrived: a slow answer is as fresh as its arrival.
            let now = clock.now();
            match result {
                Ok(()) => {
                    self.synced(now);
                    self.metrics
                        .crowdsec_last_sync
                        .set(now.unix_millis() as f64 / 1000.0);
                    if failures > 0 {
                        info!(failures, "crowdsec LAPI reachable again");
                    } else if need_startup {
                        info!(
                            decisions = self.table.load().counts().total(),
                            mode = ?self.mode,
                            "crowdsec LAPI synced"
                        );
                    }
                    failures = 0;
                    last_error.clear();
                    need_startup = false;
                }
                Err(e) => {
                    self.metrics.crowdsec_sync_errors.inc();
                    // One line per failure streak, and again when the reason changes (a TLS
                    // failure can first show as a bare "connection canceled").
                    let text = e.to_string();
                    if failures == 0 || text != last_error {
                        warn!(
                            error = %text,
                            lapi = %self.base,
                            "crowdsec LAPI sync failed; the last known decisions stay enforced"
                        );
                        last_error = text;
                    }
                    failures += 1;
                    // After a gap, ask for the full state again rather than trust a delta.
                    need_startup = true;
                }
            }
            if now.millis_since(last_sweep) >= millis(SWEEP_INTERVAL) {
                last_sweep = now;
                self.sweep(now).await;
            }
            tokio::time::sleep(self.update_interval).await;
        }
    }

    /// Drops what has expired at `now`: decisions from the table (stream), answers from the
    /// cache (live).
    async fn sweep(&self, now: Now) {
        let now_ms = now.unix_millis();
        match self.mode {
            CrowdsecMode::Stream => {
                let current = self.table.load_full();
                let secs = now.unix_secs_u32();
                let swept = self.table_worker.run(move || current.sweep(secs)).await;
                if let Ok(Some(swept)) = swept {
                    self.metrics.set_decisions(&swept.counts());
                    self.table.store(Arc::new(swept));
                }
            }
            CrowdsecMode::Live => self.live_cache.retain(|_, (_, exp)| *exp > now_ms),
        }
    }

    /// Counts the decisions the gate cannot enforce and names some of them in the log, at
    /// most once a minute: a decision is never dropped silently.
    fn note_skipped(&self, parsed: &super::stream::Parsed, now: u32) {
        let skipped = (parsed.other_scope + parsed.invalid) as u64;
        if skipped == 0 {
            return;
        }
        self.metrics.crowdsec_skipped.inc_by(skipped);
        let now = u64::from(now);
        let last = self.skipped_logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .skipped_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let examples: Vec<String> = parsed
                .skipped
                .iter()
                .map(|s| format!("{}:{} ({})", s.scope, s.value, s.why))
                .collect();
            warn!(
                skipped,
                other_scope = parsed.other_scope,
                invalid = parsed.invalid,
                examples = ?examples,
                "CrowdSec decisions the gate cannot enforce were skipped"
            );
        }
    }

    async fn sync_once(
        &self,
        startup: bool,
        timeout: Duration,
        clock: &dyn Clock,
    ) -> Result<(), LapiError> {
        let path = if startup {
            "v1/decisions/stream?startup=true"
        } else {
            "v1/decisions/stream?startup=false"
        };
        let body = self.get(path, timeout, MAX_STREAM_BODY).await?;
        // Decisions carry a remaining duration: they are dated when their answer arrived.
        let now = clock.now().unix_secs_u32();
        // Parsing a startup stream of 100k decisions takes tens of milliseconds: keep it off
        // the runtime threads that answer requests.
        let parsed = self
            .table_worker
            .run(move || parse_stream(&body, now))
            .await??;
        self.note_skipped(&parsed, now);
        let delta = parsed.delta;
        if startup {
            let table = self
                .table_worker
                .run(move || DecisionTable::from_startup(&delta))
                .await?;
            self.metrics.set_decisions(&table.counts());
            self.table.store(Arc::new(table));
        } else if !(delta.new.is_empty() && delta.deleted.is_empty()) {
            // In parts, each swapped in as soon as it is built (see `apply_part`).
            let delta = Arc::new(delta);
            for part in 0..APPLY_PARTS {
                let current = self.table.load_full();
                let d = delta.clone();
                let next = self
                    .table_worker
                    .run(move || current.apply_part(&d, part, APPLY_PARTS))
                    .await?;
                if part + 1 == APPLY_PARTS {
                    self.metrics.set_decisions(&next.counts());
                }
                self.table.store(Arc::new(next));
            }
        }
        Ok(())
    }

    async fn probe(&self, clock: &dyn Clock) -> Result<(), LapiError> {
        let body = self
            .get(
                "v1/decisions?ip=127.0.0.1",
                self.live_timeout.max(Duration::from_secs(2)),
                MAX_LIVE_BODY,
            )
            .await?;
        parse_live(&body, clock.now().unix_secs_u32())?;
        Ok(())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One long-lived thread that parses LAPI answers and builds tables. Keeping all of that work
/// on a single thread keeps its allocations in one allocator arena, where the memory a previous
/// table freed is reused by the next; spread over the blocking pool's threads, each arena kept
/// its own high-water mark and the resident set grew with every delta.
struct TableWorker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl TableWorker {
    fn start() -> Result<Self, LapiError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("crowdsec-table".to_owned())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| LapiError::Setup(format!("cannot start the table thread: {e}")))?;
        Ok(Self { jobs: tx })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LapiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| LapiError::Setup("the table thread has stopped".to_owned()))?;
        rx.await
            .map_err(|_| LapiError::Setup("the table thread dropped a job".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Now = Now::from_unix_secs(1_800_000_000);
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 11));

    /// A stream-mode bouncer for a LAPI that is never asked (nothing here runs the sync loop),
    /// with `max_staleness = "2s"`.
    fn bouncer(fail_closed: bool) -> Arc<Bouncer> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "test-key\n").unwrap();
        let config = crate::config::parse(
            &format!(
                "[crowdsec]\nlapi_url = \"http://127.0.0.1:9/\"\napi_key_file = {key:?}\n\
                 update_interval = \"1s\"\nfail_closed = {fail_closed}\nmax_staleness = \"2s\"\n"
            ),
            &[],
        )
        .unwrap();
        Bouncer::new(&config.crowdsec, Arc::new(Metrics::new()))
            .unwrap()
            .expect("CrowdSec is configured")
    }

    /// Fail-closed: nothing passes before the first sync, everything passes for
    /// `max_staleness` after a sync, and nothing passes a millisecond later.
    #[tokio::test]
    async fn fail_closed_denies_from_the_first_stale_millisecond() {
        let b = bouncer(true);
        assert!(!b.ready(T0));
        assert_eq!(b.check(CLIENT, T0).await, CrowdsecState::Unavailable);
        b.synced(T0);
        let last_fresh = T0.after(Duration::from_secs(2));
        assert!(b.ready(last_fresh));
        assert_eq!(b.check(CLIENT, last_fresh).await, CrowdsecState::Clear);
        let stale = last_fresh.after(Duration::from_millis(1));
        assert!(!b.ready(stale));
        assert_eq!(b.check(CLIENT, stale).await, CrowdsecState::Unavailable);
        // The next sync makes it fresh again, without a restart.
        b.synced(stale);
        assert!(b.ready(stale));
        assert_eq!(b.check(CLIENT, stale).await, CrowdsecState::Clear);
    }

    /// Fail-open: staleness never denies, and readiness needs only a first sync.
    #[tokio::test]
    async fn fail_open_ignores_staleness() {
        let b = bouncer(false);
        assert!(!b.ready(T0), "not ready before the first sync");
        assert_eq!(b.check(CLIENT, T0).await, CrowdsecState::Clear);
        b.synced(T0);
        let much_later = T0.after(Duration::from_secs(3600));
        assert!(b.ready(much_later));
        assert_eq!(b.check(CLIENT, much_later).await, CrowdsecState::Clear);
    }
}
