//! Start-up and the accept loop: builds the [`App`] from a [`Config`], starts the CrowdSec
//! sync and the limiter cleanup, serves HTTP/1.1 until SIGTERM/SIGINT, then drains.
//!
//! Invariants: at most `server.max_connections` connections are served at once (more wait in
//! the kernel's backlog); a client that does not finish its request head within
//! `header_read_timeout` is disconnected; on shutdown the listener closes first and in-flight
//! requests finish (up to a bound) before the process exits.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::client_ip::TrustedProxies;
use crate::clock::{Clock, SystemClock};
use crate::config::{Auth, Config, Provider as ProviderKind, Store};
use crate::crowdsec::lapi::Bouncer;
use crate::http::login::LoginEndpoints;
use crate::http::App;
use crate::metrics::Metrics;
use crate::oauth::email::EmailPolicy;
use crate::oauth::redirect::RedirectPolicy;
use crate::oauth::Provider;
use crate::ratelimit::Limiter;
use crate::rules::{GatePage, GatePages, Rules};
use crate::session::cookie::CookieCodec;
use crate::session::memory::MemoryStore;
use crate::session::redis::RedisStore;
use crate::session::{SessionStore, Sessions};
use crate::shared_limit::SharedLimit;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle rate-limit buckets are dropped.
const LIMITER_CLEANUP: Duration = Duration::from_secs(10);

/// Timeout of one session-store call: it sits on the request path of `login` routes.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the shared application state from a validated config, reading the time from
/// `clock`. Nothing here waits for a peer: the LAPI, the identity provider and Redis are
/// reached in the background.
///
/// # Errors
/// Only what the config loader cannot see: a thread that cannot be started, an HTTP client
/// that cannot be built.
pub(crate) async fn build_app(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<App>> {
    let metrics = Arc::new(Metrics::new());
    let bouncer = Bouncer::new(&config.crowdsec, metrics.clone())?;
    let login = match &config.auth {
        Some(auth) => Some(build_login(config, auth, metrics.clone()).await?),
        None => None,
    };
    Ok(Arc::new(App {
        trusted: TrustedProxies::new(&config.server.trusted_proxies),
        rules: Rules::new(config.rules.clone(), config.auth.is_some())
            .with_gate_pages(login.as_ref().map(|l| l.pages.clone()).unwrap_or_default()),
        limiter: Limiter::new(&config.rate_limit),
        shared: match &config.shared_limit {
            Some(redis) => SharedLimit::open(&config.rate_limit, redis, metrics.clone())
                .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {e}"))?,
            None => None,
        },
        bouncer,
        login,
        metrics,
        max_header_bytes: config.server.max_header_bytes,
        untrusted_warned: Default::default(),
        clock,
    }))
}

async fn build_login(
    config: &Config,
    auth: &Auth,
    metrics: Arc<Metrics>,
) -> anyhow::Result<LoginEndpoints> {
    let codec = CookieCodec::new(auth.cookie_secret.key());
    let store: Arc<dyn SessionStore> = match &config.session.store {
        Store::Memory => MemoryStore::new(),
        Store::Redis(redis) => {
            let password = redis.password.as_ref().map(|f| f.expose());
            RedisStore::connect(&redis.target, password, STORE_TIMEOUT)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    let sessions = Sessions::new(
        store,
        codec,
        config.session.cache_ttl,
        config.session.lifetime,
    );
    let public_url = auth.public_url.clone();
    let callback = crate::http::login::endpoint_of(&public_url, GatePage::Callback.path());
    let pages = GatePages::new(public_url.host_str().unwrap_or_default(), public_url.path())
        .ok_or_else(|| anyhow::anyhow!("server.public_url has no usable host name"))?;
    Ok(LoginEndpoints {
        provider: Provider::new(auth, callback.as_str())?,
        pages,
        sessions,
        emails: EmailPolicy::new(
            &auth.allowed_domains,
            &auth.allowed_emails,
            auth.provider == ProviderKind::Google,
        ),
        redirects: RedirectPolicy::new(&config.redirect_domains(), !config.session.cookie_secure),
        public_url,
        cookie_name: config.session.cookie_name.clone(),
        binding_cookie_name: format!("{}_login", config.session.cookie_name),
        cookie_domains: config.session.cookie_domains.clone(),
        cookie_secure: config.session.cookie_secure,
        metrics,
    })
}

/// Runs the gate until `shutdown` resolves.
pub(crate) async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = build_app(&config, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    if let Some(b) = &app.bouncer {
        tokio::spawn(b.clone().run(config.crowdsec.timeout, app.clock.clone()));
    }
    if let Some(login) = &app.login {
        tokio::spawn(login.provider.clone().run());
        let sessions = login.sessions.clone();
        let clock = app.clock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                sessions.cleanup(clock.now());
            }
        });
    }
    if app.limiter.enabled() {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIMITER_CLEANUP);
            loop {
                tick.tick().await;
                app.limiter.cleanup();
            }
        });
    }
    let tls = match config.server.tls.clone() {
        Some(files) => {
            let reloader = crate::tls::Reloader::new(files).map_err(anyhow::Error::msg)?;
            let server_config = reloader.server_config().map_err(anyhow::Error::msg)?;
            let reloader_for_peers = reloader.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::tls::RELOAD_INTERVAL);
                loop {
                    tick.tick().await;
                    reloader.reload_if_changed();
                }
            });
            Some((
                tokio_rustls::TlsAcceptor::from(server_config),
                reloader_for_peers,
            ))
        }
        None => None,
    };
    info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        "jacker-gate serving"
    );
    match tls {
        Some((acceptor, tls)) => serve_tls(listener, app, &config, acceptor, tls, shutdown).await,
        None => serve(listener, app, &config, shutdown).await,
    }
    info!("jacker-gate stopped");
    Ok(())
}

/// The plain HTTP/1.1 listener; returns once `shutdown` has resolved and connections have
/// drained.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http1_builder(config));
    accept_loop(
        listener,
        config,
        shutdown,
        move |stream, peer_ip, watcher| {
            let app = app.clone();
            let builder = builder.clone();
            async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req, peer_ip).await) }
                });
                let _ = watcher
                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                    .await;
            }
        },
    )
    .await;
}

/// The HTTP/1.1 side of both listeners.
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(max_buf_size(config));
    builder
}

/// The HTTP/2 side of the TLS listener, shaped for Traefik's forwardAuth client, which sends
/// every call of a busy entrypoint as a stream of one connection.
fn http2_builder(config: &Config) -> http2::Builder<hyper_util::rt::TokioExecutor> {
    let max_buf = max_buf_size(config);
    let mut builder = http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Go's client opens another connection when a peer's limit is reached, so this bounds
        // what one connection holds (streams x header list) without limiting Traefik.
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(max_buf as u32)
        // Traefik resets a call's stream when its client goes away; a burst of departing
        // clients must not reach h2's rapid-reset guard (CVE-2023-44487, default 20 pending)
        // and close the one connection every call shares. Still bounded per connection.
        .max_pending_accept_reset_streams(MAX_STREAMS as usize)
        // SETTINGS_HEADER_TABLE_SIZE 0 (RFC 7541 §4.2, RFC 9113 §6.5.2): the client's HPACK
        // encoder indexes nothing. Each call carries a new client address and URI, so indexing
        // mostly evicts; Go's encoder spends a tenth of Traefik's forwardAuth CPU on it.
        .header_table_size(0)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// HTTP/2 for connections without the client certificate the CA requires: enough for a
/// liveness probe and no more, whatever the peer asks for.
fn http2_health_builder() -> http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder = http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(2)
        .max_header_list_size(8192)
        .header_table_size(0);
    builder
}

/// Streams one HTTP/2 connection serves at once.
const MAX_STREAMS: u32 = 256;

/// The TLS listener: each connection's handshake (bounded by `header_read_timeout`), then
/// HTTP/2 or HTTP/1.1 as ALPN chose (HTTP/1.1 without ALPN). Returns once `shutdown` has
/// resolved and connections have drained.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    app: Arc<App>,
    config: &Config,
    acceptor: tokio_rustls::TlsAcceptor,
    tls: Arc<crate::tls::Reloader>,
    shutdown: impl Future<Output = ()>,
) {
    let h1 = Arc::new(http1_builder(config));
    let h2 = Arc::new(http2_builder(config));
    let h2_health = Arc::new(http2_health_builder());
    let handshake_timeout = config.server.header_read_timeout;
    // Unix seconds of the last "handshake failed" warning: a client Traefik cannot complete a
    // handshake with shows there as a 500, so the reason belongs in the log, once a minute.
    let warned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let health_only_slots = Arc::new(Semaphore::new(HEALTH_ONLY_CONNECTIONS));
    let loopback_health_slots = Arc::new(Semaphore::new(LOOPBACK_HEALTH_CONNECTIONS));
    accept_loop(listener, config, shutdown, move |stream, peer_ip, watcher| {
        let warned = warned.clone();
        // The container's own healthcheck dials loopback: its slots are not the ones any peer
        // on the network can fill.
        let health_only_slots = if peer_ip.to_canonical().is_loopback() {
            loopback_health_slots.clone()
        } else {
            health_only_slots.clone()
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let (h1, h2, h2_health) = (h1.clone(), h2.clone(), h2_health.clone());
        let tls_files = tls.clone();
        let clock = app.clock.clone();
        async move {
            // A peer that does not finish its handshake in time, or presents a certificate the
            // client CA did not issue, gets no answer: the connection just ends.
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    use std::sync::atomic::Ordering;
                    let now = clock.now().unix_secs();
                    let last = warned.load(Ordering::Relaxed);
                    if now >= last + 60
                        && warned
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        warn!(peer = %peer_ip, error = %e, "TLS handshake failed (one line a minute)");
                    } else {
                        tracing::debug!(peer = %peer_ip, error = %e, "TLS handshake failed");
                    }
                    return;
                }
                Err(_) => return,
            };
            // Without the client certificate the CA requires, only the liveness probe is
            // answered; any other request is refused (HTTP/1.1: the connection ends; HTTP/2:
            // the stream is reset).
            let health_only =
                tls_files.requires_client_cert() && tls.get_ref().1.peer_certificates().is_none();
            // Such connections are few and short-lived, so that clients without a certificate
            // cannot hold the connection slots Traefik needs.
            let _health_slot = if health_only {
                match health_only_slots.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => return,
                }
            } else {
                None
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move {
                    if health_only && req.uri().path() != "/healthz" {
                        tracing::debug!(peer = %peer_ip, "TLS client without a certificate: refused");
                        return Err(NoClientCertificate);
                    }
                    Ok(app.handle(req, peer_ip).await)
                }
            });
            let lifetime = if health_only {
                HEALTH_ONLY_LIFETIME
            } else {
                Duration::MAX
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                let h2 = if health_only { &h2_health } else { &h2 };
                let conn = watcher.watch(h2.serve_connection(TokioIo::new(tls), service));
                let _ = tokio::time::timeout(lifetime, conn).await;
            } else {
                let conn = watcher.watch(h1.serve_connection(TokioIo::new(tls), service));
                let _ = tokio::time::timeout(lifetime, conn).await;
            }
        }
    })
    .await;
}

/// At most this many TLS connections without the client certificate the CA requires are
/// served at once from the network (Blackbox's probe needs one); more are closed after the
/// handshake.
const HEALTH_ONLY_CONNECTIONS: usize = 8;
/// The same from loopback (the container's healthcheck), counted apart.
const LOOPBACK_HEALTH_CONNECTIONS: usize = 4;
/// How long such a connection is kept: a healthcheck takes milliseconds.
const HEALTH_ONLY_LIFETIME: Duration = Duration::from_secs(5);

/// hyper answers 431 itself when a request head outgrows its buffer; leave room for the request
/// line and separators beyond the names and values `max_header_bytes` counts.
fn max_buf_size(config: &Config) -> usize {
    (config.server.max_header_bytes + 8192).max(8192)
}

/// Accepts connections while fewer than `max_connections` are served (more wait in the
/// kernel's backlog), runs `serve_one` for each on a task of its own, and once `shutdown`
/// resolves closes the listener and waits (up to a bound) for in-flight requests.
async fn accept_loop<F>(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()>,
    mut serve_one: impl FnMut(TcpStream, IpAddr, Watcher) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(config.server.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_one(stream, peer.ip(), graceful.watcher());
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }

    drop(listener);
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("drain timed out; closing remaining connections"),
    }
}

/// A request on a TLS connection without the client certificate the CA requires: hyper ends
/// the connection without an answer.
#[derive(Debug)]
struct NoClientCertificate;

impl std::fmt::Display for NoClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no client certificate")
    }
}

impl std::error::Error for NoClientCertificate {}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
