//! Fault injection against the gate's peers (issue "Hardening", item 2). Each case drives a real
//! gate binary against a peer that fails: a real Redis killed and restarted under load or frozen
//! with SIGSTOP, a real OpenID provider frozen at discovery or at the token exchange, and a
//! CrowdSec LAPI stand-in (tests/support/fake_peer.rs) that answers 500, garbage, `[]`, a body
//! cut short, a body over the size cap, or too slowly. What every case checks:
//!
//! - no 2xx where the README forbids one (a login route without a usable session; everything with
//!   `fail_closed` once stale);
//! - no request waits longer than the configured timeouts (the session store's 1 s, the
//!   provider's 10 s; `/auth` never waits on the LAPI in stream mode);
//! - the gate recovers by itself once the peer behaves again, without a restart;
//! - the metrics (`jacker_gate_session_store_errors_total`,
//!   `jacker_gate_crowdsec_sync_errors_total`, the decision gauges, the last-sync time) and
//!   `/readyz` tell the truth meanwhile.
//!
//! The LAPI killed or frozen, the provider down and a token signed by another key are in
//! tests/gate/crowdsec.rs and tests/login/login.rs. Peers: `bash scripts/install-test-deps.sh` and
//! `bash tests/support/install-login-peers.sh`.

use crate::support;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::fake_peer::{FakeLapi, LapiFault};
use crate::support::gate::Gate;
use crate::support::login::{log_in, walk_to_callback, LoginGate, Store, COOKIE_NAME};
use crate::support::oidc::{OidcProvider, ALICE, ERIN};
use crate::support::redis::Redis;
use crate::support::reserve_port;
use crate::support::web::Browser;
use crate::support::{eventually, metric_sum};

/// The gate's session-store timeout (`server.rs` `STORE_TIMEOUT`): one Redis call.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest any `/auth` may take while Redis is dead or frozen: a connection attempt and a
/// command, each bounded by the store timeout, plus slack for a loaded machine (a fuzzer runs
/// beside the tests).
const STORE_BOUND: Duration = Duration::from_millis(3 * STORE_TIMEOUT.as_millis() as u64);
/// The gate's timeout for one request to the OpenID provider (`oauth/mod.rs`).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Redis.

/// One `/auth` answer seen by a load worker.
#[derive(Clone, Debug)]
struct Sample {
    user: &'static str,
    started: Instant,
    ended: Instant,
    /// 0: the request failed without an HTTP answer.
    status: u16,
    email: Option<String>,
}

impl Sample {
    fn took(&self) -> Duration {
        self.ended - self.started
    }
}

/// A loop of `/auth` requests, each carrying one of `sessions` (user, cookie value), on a route
/// that needs a login, from `workers` concurrent tasks until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gate: &Gate, sessions: &[(&'static str, String)], workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let host = format!("127.0.0.1:{}", gate.port());
        let url = format!("{}/auth", gate.url());
        let tasks = (0..workers)
            .map(|w| {
                let (user, value) = sessions[w % sessions.len()].clone();
                let cookie = format!("{COOKIE_NAME}={value}");
                let (stop, samples, host, url) =
                    (stop.clone(), samples.clone(), host.clone(), url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .redirect(reqwest::redirect::Policy::none())
                        .timeout(Duration::from_secs(20))
                        .build()
                        .expect("HTTP client");
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let answer = client
                            .get(&url)
                            .header("X-Forwarded-Method", "GET")
                            .header("X-Forwarded-Proto", "http")
                            .header("X-Forwarded-Host", &host)
                            .header("X-Forwarded-Uri", "/load")
                            .header("X-Forwarded-For", "192.0.2.10")
                            .header("Cookie", &cookie)
                            .send()
                            .await;
                        let (status, email) = match answer {
                            Ok(r) => (
                                r.status().as_u16(),
                                r.headers()
                                    .get("x-auth-request-email")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                            ),
                            Err(_) => (0, None),
                        };
                        samples.lock().expect("samples").push(Sample {
                            user,
                            started,
                            ended: Instant::now(),
                            status,
                            email,
                        });
                        // A short pause keeps the log volume sane; four workers still keep the
                        // gate busy at every moment of the outage.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            tasks,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// Waits until some request that started after `since` got 200 for every user with the
    /// right identity; returns when that was.
    async fn wait_all_pass_since(&self, since: Instant, users: &[&str], what: &str) -> Instant {
        eventually(Duration::from_secs(15), what, async || {
            let samples = self.samples();
            let mut latest = since;
            for user in users {
                let ok = samples.iter().find(|s| {
                    s.user == *user
                        && s.started > since
                        && s.status == 200
                        && s.email.as_deref() == Some(*user)
                });
                match ok {
                    Some(s) => latest = latest.max(s.ended),
                    None => {
                        let last: Vec<u16> =
                            samples.iter().rev().take(8).map(|s| s.status).collect();
                        return Err(format!("{user}: none yet; latest statuses {last:?}"));
                    }
                }
            }
            Ok(latest)
        })
        .await
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load worker");
        }
        Arc::try_unwrap(self.samples)
            .expect("workers ended")
            .into_inner()
            .expect("samples")
    }
}

/// A provider, a Redis and a gate whose sessions live in that Redis with `cache_ttl = "0s"`
/// (every request asks the store: no cached grace hides an outage), plus a public route.
struct RedisEnv {
    idp: OidcProvider,
    gate: Gate,
}

fn redis_env(redis: &Redis) -> RedisEnv {
    let gate_port = reserve_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    let gate = LoginGate::new(&idp, gate_port)
        .store(Store::Redis(redis.url()))
        .cache_ttl("0s")
        .extra(
            r#"
[[rules]]
path_prefix = "/public"
policy = "public"
"#,
        )
        .start();
    RedisEnv { idp, gate }
}

impl RedisEnv {
    /// Logs `user` in through the provider; returns the session cookie value.
    async fn session_for(&self, user: &str) -> String {
        let browser = Browser::new();
        let original = format!("{}/start-{}", self.gate.url(), user.replace('@', "-"));
        let (_, answer) = log_in(&browser, &self.gate, &self.idp, &original, user).await;
        assert_eq!(
            answer.status,
            302,
            "login as {user}: {}\ngate logs:\n{}",
            answer.describe(),
            self.gate.logs()
        );
        browser.cookie(COOKIE_NAME).expect("session cookie").value
    }

    async fn store_errors(&self) -> f64 {
        let metrics = self.gate.metrics().await;
        metric_sum(&metrics, "jacker_gate_session_store_errors_total", &[]).unwrap_or(0.0)
    }

    /// `/readyz` status and how long it took.
    async fn readyz(&self) -> (u16, Duration) {
        let started = Instant::now();
        let (status, _, _) = self.gate.get("/readyz", &[]).await;
        (status, started.elapsed())
    }

    async fn public_status(&self) -> u16 {
        let browser = Browser::new();
        browser
            .forward_auth(
                &format!("{}/auth", self.gate.url()),
                "GET",
                &format!("{}/public/x", self.gate.url()),
                false,
                &[],
            )
            .await
            .status
    }
}

/// Every session record in `redis` (key, JSON value), to put back after a restart as a Redis
/// with persistence would.
fn session_records(redis: &Redis) -> Vec<(String, String)> {
    tokio::task::block_in_place(|| {
        let keys = redis.cli(&["--scan", "--pattern", "jacker-gate:session:*"]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|key| {
                let value = redis.cli(&["GET", key]);
                (key.to_owned(), value.trim_end_matches('\n').to_owned())
            })
            .collect()
    })
}

fn restore_records(redis: &Redis, records: &[(String, String)]) {
    tokio::task::block_in_place(|| {
        for (key, value) in records {
            let reply = redis.cli(&["SET", key, value, "EX", "3600"]);
            assert_eq!(reply.trim(), "OK", "SET {key}");
        }
    });
}

fn describe(samples: &[&Sample]) -> String {
    samples
        .iter()
        .take(20)
        .map(|s| format!("{} {} in {:?}", s.user, s.status, s.took()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Redis is killed (SIGKILL) while four workers keep asking `/auth` with valid sessions, stays
/// down for a few seconds, and comes back (with the session records put back, as a persistent
/// Redis would). Every answer that needed the store while it was gone is 503, never 2xx; none
/// takes longer than the store timeout allows; the gate reconnects by itself; the error counter
/// rises and `/readyz` is 503 while down and 200 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let _exclusive = support::exclusive().await;
    let mut redis = Redis::start();
    let e = redis_env(&redis);
    let sessions = [(ALICE, e.session_for(ALICE).await)];
    let records = session_records(&redis);
    assert_eq!(records.len(), 1, "one session record: {records:?}");
    let errors_before = e.store_errors().await;

    let load = Load::start(&e.gate, &sessions, 4);
    let warm = load
        .wait_all_pass_since(Instant::now(), &[ALICE], "the session to pass under load")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let kill_started = Instant::now();
    tokio::task::block_in_place(|| redis.stop());
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ready_down, ready_took) = e.readyz().await;
    let public_down = e.public_status().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let restart_started = Instant::now();
    tokio::task::block_in_place(|| redis.start_again());
    restore_records(&redis, &records);
    let restored = Instant::now();
    let recovered = load
        .wait_all_pass_since(
            restored,
            &[ALICE],
            "the session to pass again after the restart",
        )
        .await;
    let recovery = recovered - restored;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.stop().await;
    let (ready_after, _) = e.readyz().await;
    let errors_after = e.store_errors().await;
    let context = format!("\ngate logs (tail):\n{}", tail(&e.gate.logs(), 40));

    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= killed && s.ended <= restart_started)
        .collect();
    assert!(
        during.len() >= 10,
        "too few requests while Redis was down ({}): the load did not run{context}",
        during.len()
    );
    let wrong: Vec<&Sample> = during.iter().copied().filter(|s| s.status != 503).collect();
    assert!(
        wrong.is_empty(),
        "while Redis was dead every /auth on a login route must be 503:\n{}{context}",
        describe(&wrong)
    );
    // Wider: any 2xx must overlap a moment when Redis held the session.
    let leaked: Vec<&Sample> = samples
        .iter()
        .filter(|s| (200..300).contains(&s.status) && s.started >= killed && s.ended < restored)
        .collect();
    assert!(
        leaked.is_empty(),
        "2xx while the store had no session to give:\n{}{context}",
        describe(&leaked)
    );
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status == 0).collect();
    assert!(
        failed.is_empty(),
        "requests without an answer:\n{}{context}",
        describe(&failed)
    );
    let slowest = samples.iter().max_by_key(|s| s.took()).expect("samples");
    assert!(
        slowest.took() <= STORE_BOUND,
        "an /auth took {:?} (status {}) around the outage; the store timeout is {STORE_TIMEOUT:?}{context}",
        slowest.took(),
        slowest.status
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.ended <= kill_started && s.started >= warm)
            .all(|s| s.status == 200 && s.email.as_deref() == Some(ALICE)),
        "before the kill every request passes as {ALICE}{context}"
    );
    assert_eq!(
        ready_down, 503,
        "/readyz while Redis is dead (took {ready_took:?}){context}"
    );
    assert!(ready_took <= STORE_BOUND, "/readyz took {ready_took:?}");
    assert_eq!(public_down, 200, "public routes need no store{context}");
    assert_eq!(ready_after, 200, "/readyz after Redis came back{context}");
    assert!(
        errors_after > errors_before,
        "jacker_gate_session_store_errors_total did not rise: {errors_before} → {errors_after}"
    );
    println!(
        "redis kill: {} requests, {} while down (all 503), slowest {:?}, recovered {:?} after the restart",
        samples.len(),
        during.len(),
        slowest.took(),
        recovery
    );
}

/// Redis frozen (SIGSTOP): its socket accepts and never answers. Every `/auth` that needs it is
/// 503 within the store timeout (also the ones after the gate gave up on the old connection
/// and tries a new one), `/readyz` is 503 just as fast, and after SIGCONT both sessions pass
/// again — each with its own identity: answers queued in the frozen connection must not be
/// handed to the wrong request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_times_out_and_recovers_without_mixing_answers() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let e = redis_env(&redis);
    let sessions = [
        (ALICE, e.session_for(ALICE).await),
        (ERIN, e.session_for(ERIN).await),
    ];
    let errors_before = e.store_errors().await;
    let load = Load::start(&e.gate, &sessions, 4);
    load.wait_all_pass_since(Instant::now(), &[ALICE, ERIN], "both sessions to pass")
        .await;

    redis.pause();
    // `kill -STOP` has returned: the signal is sent; give the kernel a moment to stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ready_first, ready_first_took) = e.readyz().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ready_later, ready_later_took) = e.readyz().await;
    let resume_started = Instant::now();
    redis.resume();
    load.wait_all_pass_since(
        Instant::now(),
        &[ALICE, ERIN],
        "both sessions after SIGCONT",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let samples = load.stop().await;
    let (ready_after, _) = e.readyz().await;
    let errors_after = e.store_errors().await;
    let context = format!("\ngate logs (tail):\n{}", tail(&e.gate.logs(), 40));

    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= paused && s.ended <= resume_started)
        .collect();
    assert!(during.len() >= 6, "too few requests while frozen{context}");
    let wrong: Vec<&Sample> = during.iter().copied().filter(|s| s.status != 503).collect();
    assert!(
        wrong.is_empty(),
        "while Redis was frozen every /auth on a login route must be 503:\n{}{context}",
        describe(&wrong)
    );
    let leaked: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            (200..300).contains(&s.status) && s.started >= paused && s.ended < resume_started
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "2xx while frozen:\n{}",
        describe(&leaked)
    );
    let mixed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == 200 && s.email.as_deref() != Some(s.user))
        .collect();
    assert!(
        mixed.is_empty(),
        "a session passed with another user's identity:\n{}",
        mixed
            .iter()
            .map(|s| format!("{} got {:?}", s.user, s.email))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let slowest = samples.iter().max_by_key(|s| s.took()).expect("samples");
    assert!(
        slowest.took() <= STORE_BOUND,
        "an /auth took {:?} (status {}) while Redis was frozen; the store timeout is {STORE_TIMEOUT:?}{context}",
        slowest.took(),
        slowest.status
    );
    for (status, took) in [
        (ready_first, ready_first_took),
        (ready_later, ready_later_took),
    ] {
        assert_eq!(status, 503, "/readyz while Redis is frozen{context}");
        assert!(took <= STORE_BOUND, "/readyz took {took:?} while frozen");
    }
    assert_eq!(ready_after, 200, "/readyz after SIGCONT{context}");
    assert!(
        errors_after > errors_before,
        "jacker_gate_session_store_errors_total did not rise: {errors_before} → {errors_after}"
    );
    println!(
        "redis frozen: {} requests, {} while frozen (all 503), slowest {:?}",
        samples.len(),
        during.len(),
        slowest.took()
    );
}

// ---------------------------------------------------------------------------------------------
// The OpenID provider frozen (it accepts connections and never answers).

/// A request to the gate that must not wait on the frozen provider: status and time taken.
async fn quick(
    gate: &Gate,
    browser: &Browser,
    original: &str,
    navigation: bool,
) -> (u16, Duration) {
    let started = Instant::now();
    let answer = browser
        .forward_auth(
            &format!("{}/auth", gate.url()),
            "GET",
            original,
            navigation,
            &[],
        )
        .await;
    (answer.status, started.elapsed())
}

/// The provider freezes between the authorization and the token exchange: the callback waits
/// for the gate's provider timeout, then answers 503 with no session; meanwhile sessions that
/// exist, public routes and the health endpoints answer at once. After SIGCONT logins work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_frozen_at_the_token_exchange() {
    let _exclusive = support::exclusive().await;
    let gate_port = reserve_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    let gate = LoginGate::new(&idp, gate_port)
        .extra("[[rules]]\npath_prefix = \"/public\"\npolicy = \"public\"\n")
        .start();
    let page = format!("{}/app", gate.url());
    let signed_in = Browser::new();
    let (_, answer) = log_in(&signed_in, &gate, &idp, &page, ALICE).await;
    assert_eq!(answer.status, 302, "{}\n{}", answer.describe(), gate.logs());

    // A second login, walked up to the provider's redirect back to the gate.
    let newcomer = Browser::new();
    let first = newcomer
        .forward_auth(&format!("{}/auth", gate.url()), "GET", &page, true, &[])
        .await;
    let walk = walk_to_callback(&newcomer, &idp, first, ERIN).await;
    let errors_before = provider_errors(&gate).await;

    idp.pause();
    let callback = {
        let url = walk.callback.to_string();
        let newcomer = newcomer.fork();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = newcomer.navigate(&url).await;
            (answer, started.elapsed(), newcomer)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While the callback hangs on the provider: everything else answers at once.
    let mut side = Vec::new();
    for _ in 0..5 {
        side.push(("session", quick(&gate, &signed_in, &page, false).await));
        side.push((
            "public",
            quick(
                &gate,
                &Browser::new(),
                &format!("{}/public/x", gate.url()),
                false,
            )
            .await,
        ));
        side.push((
            "no session",
            quick(&gate, &Browser::new(), &page, false).await,
        ));
        let started = Instant::now();
        side.push((
            "readyz",
            (gate.get("/readyz", &[]).await.0, started.elapsed()),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (answer, took, newcomer) = callback.await.expect("callback task");
    idp.resume();
    let context = format!("\ngate logs:\n{}", gate.logs());

    for (what, (status, took)) in &side {
        let want = match *what {
            "no session" => 401,
            _ => 200,
        };
        assert_eq!(
            *status, want,
            "{what} while the provider is frozen{context}"
        );
        assert!(
            *took < PROVIDER_TIMEOUT / 2,
            "{what} took {took:?} while the provider is frozen: it waited on the provider{context}"
        );
    }
    assert_eq!(
        answer.status,
        503,
        "the callback against a frozen provider: {}{context}",
        answer.describe()
    );
    assert!(
        took <= PROVIDER_TIMEOUT + Duration::from_secs(4),
        "the callback took {took:?}; the provider timeout is {PROVIDER_TIMEOUT:?}"
    );
    assert!(
        newcomer.cookie(COOKIE_NAME).is_none(),
        "no session from a failed exchange"
    );
    assert!(provider_errors(&gate).await > errors_before);

    // Thawed: a fresh login goes through.
    let fresh = Browser::new();
    let (_, answer) = log_in(&fresh, &gate, &idp, &page, ERIN).await;
    assert_eq!(answer.status, 302, "{}{context}", answer.describe());
    let (status, _) = quick(&gate, &fresh, &page, false).await;
    assert_eq!(status, 200);
    println!("provider frozen at the token exchange: the callback answered 503 after {took:?}");
}

/// A gate that starts while the provider is frozen: `/oauth2/start` answers 503 once discovery
/// times out (never hangs beyond the provider timeout), while `/auth` keeps answering at once
/// (401 for API calls, 302 to the login for navigations, 200 on public routes). After SIGCONT
/// logins work without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_frozen_at_discovery() {
    let _exclusive = support::exclusive().await;
    let gate_port = reserve_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    idp.pause();
    let gate = LoginGate::new(&idp, gate_port)
        .extra("[[rules]]\npath_prefix = \"/public\"\npolicy = \"public\"\n")
        .start();
    let page = format!("{}/app", gate.url());

    let start = {
        let url = format!(
            "{}/oauth2/start?rd={}",
            gate.url(),
            url::form_urlencoded::byte_serialize(page.as_bytes()).collect::<String>()
        );
        tokio::spawn(async move {
            let browser = Browser::new();
            let started = Instant::now();
            let answer = browser.navigate(&url).await;
            (answer, started.elapsed())
        })
    };
    let mut side = Vec::new();
    for _ in 0..5 {
        side.push((
            "api",
            401,
            quick(&gate, &Browser::new(), &page, false).await,
        ));
        side.push((
            "navigation",
            302,
            quick(&gate, &Browser::new(), &page, true).await,
        ));
        side.push((
            "public",
            200,
            quick(
                &gate,
                &Browser::new(),
                &format!("{}/public/x", gate.url()),
                false,
            )
            .await,
        ));
        let started = Instant::now();
        side.push((
            "healthz",
            200,
            (gate.get("/healthz", &[]).await.0, started.elapsed()),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (answer, took) = start.await.expect("start task");
    idp.resume();
    let context = format!("\ngate logs:\n{}", gate.logs());

    for (what, want, (status, took)) in &side {
        assert_eq!(status, want, "{what} while discovery hangs{context}");
        assert!(
            *took < PROVIDER_TIMEOUT / 2,
            "{what} took {took:?} while discovery hangs: it waited on the provider{context}"
        );
    }
    assert_eq!(
        answer.status,
        503,
        "/oauth2/start while discovery hangs: {}{context}",
        answer.describe()
    );
    assert!(
        took <= PROVIDER_TIMEOUT + Duration::from_secs(4),
        "/oauth2/start took {took:?}; the provider timeout is {PROVIDER_TIMEOUT:?}"
    );

    let browser = Browser::new();
    eventually(
        Duration::from_secs(20),
        "a login once the provider thawed",
        async || {
            browser.clear_cookies();
            let first = browser
                .forward_auth(&format!("{}/auth", gate.url()), "GET", &page, true, &[])
                .await;
            let walk = walk_to_callback(&browser, &idp, first, ALICE).await;
            let answer = browser.navigate(walk.callback.as_str()).await;
            (answer.status == 302)
                .then_some(())
                .ok_or_else(|| answer.describe())
        },
    )
    .await;
    let (status, _) = quick(&gate, &browser, &page, false).await;
    assert_eq!(status, 200, "{context}");
    println!("provider frozen at discovery: /oauth2/start answered 503 after {took:?}");
}

async fn provider_errors(gate: &Gate) -> f64 {
    let metrics = gate.metrics().await;
    metric_sum(
        &metrics,
        "jacker_gate_logins_total",
        &[("result", "provider_error")],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// The CrowdSec LAPI answering badly.

const BANNED: &str = "192.0.2.10";
const CLEAN: &str = "192.0.2.11";
const BANNED_LATER: &str = "192.0.2.12";
/// `crowdsec.update_interval` and `crowdsec.timeout` of the gates here.
const UPDATE_INTERVAL: &str = "1s";
const LAPI_TIMEOUT: Duration = Duration::from_secs(1);
/// `crowdsec.max_staleness` of the fail-closed gate.
const MAX_STALENESS: &str = "2s";

/// Two gates on one LAPI: the default (fail-open) and `fail_closed = true`.
struct LapiGates {
    open: Gate,
    closed: Gate,
}

fn lapi_gates(lapi: &FakeLapi) -> LapiGates {
    let gate = |fail_closed: bool| {
        let setup = Gate::setup();
        let key_file = setup.write_secret("crowdsec_key", &format!("key-{fail_closed}"));
        setup.start(&format!(
            r#"
[crowdsec]
lapi_url = "{url}"
api_key_file = "{key}"
mode = "stream"
update_interval = "{UPDATE_INTERVAL}"
timeout = "{timeout}s"
fail_closed = {fail_closed}
max_staleness = "{MAX_STALENESS}"

[rate_limit]
per_second = 0
"#,
            url = lapi.url(),
            key = key_file.display(),
            timeout = LAPI_TIMEOUT.as_secs(),
        ))
    };
    LapiGates {
        open: gate(false),
        closed: gate(true),
    }
}

/// `/auth` status for `client_ip`, and how long it took.
async fn verdict(gate: &Gate, client_ip: &str) -> (u16, Duration) {
    let started = Instant::now();
    let (status, _, _) = gate
        .get(
            "/auth",
            &[
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "app.example.test"),
                ("X-Forwarded-Uri", "/"),
                ("X-Forwarded-For", client_ip),
            ],
        )
        .await;
    (status, started.elapsed())
}

/// What one gate says right now: status per address, `/readyz`, and the LAPI metrics.
#[derive(Debug)]
struct CrowdsecView {
    statuses: Vec<(String, u16)>,
    ready: u16,
    sync_errors: f64,
    last_sync: f64,
    bans: f64,
}

async fn look(gate: &Gate, ips: &[&str]) -> CrowdsecView {
    let mut statuses = Vec::new();
    for ip in ips {
        let (status, took) = verdict(gate, ip).await;
        assert!(
            took < Duration::from_secs(1),
            "/auth took {took:?}: stream mode must never wait on the LAPI"
        );
        statuses.push(((*ip).to_owned(), status));
    }
    let ready = gate.get("/readyz", &[]).await.0;
    let metrics = gate.metrics().await;
    CrowdsecView {
        statuses,
        ready,
        sync_errors: metric_sum(&metrics, "jacker_gate_crowdsec_sync_errors_total", &[])
            .unwrap_or(0.0),
        last_sync: metric_sum(
            &metrics,
            "jacker_gate_crowdsec_last_sync_timestamp_seconds",
            &[],
        )
        .unwrap_or(0.0),
        bans: metric_sum(
            &metrics,
            "jacker_gate_crowdsec_decisions",
            &[("type", "ban"), ("scope", "ip")],
        )
        .unwrap_or(0.0),
    }
}

impl CrowdsecView {
    fn status(&self, ip: &str) -> u16 {
        self.statuses
            .iter()
            .find(|(i, _)| i == ip)
            .map_or(0, |(_, s)| *s)
    }
}

/// Waits (up to 15 s) until `gate` shows what `want` accepts; returns that view.
async fn wait_view(
    gate: &Gate,
    ips: &[&str],
    what: &str,
    want: impl Fn(&CrowdsecView) -> bool,
) -> CrowdsecView {
    eventually(Duration::from_secs(15), what, async || {
        let view = look(gate, ips).await;
        if want(&view) {
            Ok(view)
        } else {
            Err(format!(
                "{view:?}\ngate logs (tail):\n{}",
                tail(&gate.logs(), 20)
            ))
        }
    })
    .await
}

/// The whole story for one fault: both gates synced from a good LAPI (one ban); the LAPI turns
/// bad; the fail-open gate keeps the ban, lets others pass, stays ready and counts errors; the
/// fail-closed gate keeps the ban and, once stale, denies everyone and is not ready; the LAPI
/// turns good with one more ban; both gates pick it up, let the others pass again and are
/// ready. `log_hint` is a piece of the error the gate must log (the operator's clue).
async fn lapi_fault(fault: LapiFault, log_hint: &str) {
    let _exclusive = support::exclusive().await;
    let lapi = FakeLapi::start();
    lapi.ban_ip(BANNED);
    let gates = lapi_gates(&lapi);
    let ips = [BANNED, CLEAN, BANNED_LATER];
    let synced = |v: &CrowdsecView| {
        v.ready == 200 && v.status(BANNED) == 403 && v.status(CLEAN) == 200 && v.bans == 1.0
    };
    let open_before = wait_view(&gates.open, &ips, "the first sync (open)", synced).await;
    let closed_before = wait_view(&gates.closed, &ips, "the first sync (closed)", synced).await;

    lapi.set_fault(Some(fault));
    let faulted = Instant::now();
    // Fail-open: errors counted; the ban holds; others pass; still ready (it has synced).
    let open_during = wait_view(&gates.open, &ips, "sync errors counted (open)", |v| {
        v.sync_errors >= open_before.sync_errors + 2.0
    })
    .await;
    // Fail-closed: once no sync succeeded within max_staleness, everyone is denied.
    let closed_during = wait_view(&gates.closed, &ips, "fail-closed once stale", |v| {
        v.ready == 503 && v.status(CLEAN) == 403
    })
    .await;
    // Look once more at the fail-open gate, well past max_staleness.
    let open_later = look(&gates.open, &ips).await;
    let seen_during = lapi
        .seen()
        .iter()
        .filter(|s| s.at >= faulted && s.path() == "/v1/decisions/stream")
        .count();

    lapi.ban_ip(BANNED_LATER);
    lapi.set_fault(None);
    let recovered = |v: &CrowdsecView| {
        v.ready == 200
            && v.status(BANNED) == 403
            && v.status(BANNED_LATER) == 403
            && v.status(CLEAN) == 200
            && v.bans == 2.0
    };
    let open_after = wait_view(&gates.open, &ips, "recovery (open)", recovered).await;
    let closed_after = wait_view(&gates.closed, &ips, "recovery (closed)", recovered).await;

    let context = format!(
        "\nfault {fault:?}\nopen gate logs (tail):\n{}",
        tail(&gates.open.logs(), 20)
    );
    assert!(
        seen_during >= 2,
        "the gates asked the faulty LAPI {seen_during} times"
    );
    for (when, view) in [("during", &open_during), ("later", &open_later)] {
        assert_eq!(
            view.status(BANNED),
            403,
            "open, {when}: the known ban holds{context}"
        );
        assert_eq!(
            view.status(CLEAN),
            200,
            "open, {when}: others pass{context}"
        );
        assert_eq!(view.status(BANNED_LATER), 200, "open, {when}{context}");
        assert_eq!(
            view.ready, 200,
            "open, {when}: synced once, fail-open → ready{context}"
        );
        assert_eq!(
            view.bans, 1.0,
            "open, {when}: the table was not touched{context}"
        );
    }
    assert_eq!(
        open_later.last_sync, open_during.last_sync,
        "open: no sync succeeded while the LAPI misbehaved{context}"
    );
    assert_eq!(
        closed_during.status(BANNED),
        403,
        "closed: the ban holds{context}"
    );
    assert_eq!(
        closed_during.bans, 1.0,
        "closed: the table was not touched{context}"
    );
    assert!(
        closed_during.sync_errors > closed_before.sync_errors,
        "closed: errors counted{context}"
    );
    for (name, before, after) in [
        ("open", &open_before, &open_after),
        ("closed", &closed_before, &closed_after),
    ] {
        assert!(
            after.last_sync > before.last_sync,
            "{name}: the last-sync time moved on after recovery{context}"
        );
    }
    let logs = gates.open.logs();
    let logged = logs
        .lines()
        .find(|l| l.contains("crowdsec LAPI sync failed") && l.contains(log_hint))
        .unwrap_or_else(|| panic!("no sync failure logged with {log_hint:?}{context}"));
    println!("{fault:?}: {logged}");
    assert!(
        logs.contains("crowdsec LAPI reachable again"),
        "recovery not logged{context}"
    );
}

#[tokio::test]
async fn lapi_answering_500() {
    lapi_fault(LapiFault::Status500, "HTTP 500").await;
}

#[tokio::test]
async fn lapi_answering_an_html_page() {
    lapi_fault(LapiFault::Garbage, "not a JSON object").await;
}

#[tokio::test]
async fn lapi_answering_broken_json() {
    lapi_fault(
        LapiFault::BrokenJson,
        "invalid LAPI response: EOF while parsing",
    )
    .await;
}

/// `[]` parses as JSON, and serde would even take it for an empty struct: it must not pass for
/// an empty startup stream and wipe the table.
#[tokio::test]
async fn lapi_answering_an_empty_array() {
    lapi_fault(LapiFault::EmptyArray, "not a JSON object").await;
}

/// The bytes that do arrive are a complete empty startup answer: only the missing bytes tell
/// it is cut short. Taking it would wipe every ban.
#[tokio::test]
async fn lapi_body_shorter_than_its_content_length() {
    lapi_fault(
        LapiFault::ShortBody,
        "end of file before message length reached",
    )
    .await;
}

#[tokio::test]
async fn lapi_chunked_body_without_its_last_chunk() {
    lapi_fault(LapiFault::UnfinishedChunks, "unexpected EOF").await;
}

/// A `Content-Length` over the 256 MiB cap is refused before reading (the body never comes,
/// so only the cap's own message tells it from a timeout).
#[tokio::test]
async fn lapi_body_over_the_size_cap() {
    lapi_fault(LapiFault::TooLarge, "larger than 268435456 bytes").await;
}

/// The right answer, but three timeouts late: the request is abandoned at `crowdsec.timeout`.
#[tokio::test]
async fn lapi_answer_slower_than_the_timeout() {
    lapi_fault(LapiFault::SlowHead(LAPI_TIMEOUT * 3), "timed out").await;
}

/// The head arrives at once, then the body a byte at a time: the timeout covers the body too.
#[tokio::test]
async fn lapi_body_dribbled_past_the_timeout() {
    lapi_fault(LapiFault::SlowBody(LAPI_TIMEOUT * 4), "timed out").await;
}

/// A LAPI that fails from the start: neither gate is ready; the fail-open gate lets everyone
/// pass (it knows no decision yet), the fail-closed one denies everyone; the first good answer
/// makes both ready and enforcing.
#[tokio::test]
async fn lapi_failing_from_the_start_leaves_the_gate_unready() {
    let _exclusive = support::exclusive().await;
    let lapi = FakeLapi::start();
    lapi.ban_ip(BANNED);
    lapi.set_fault(Some(LapiFault::Status500));
    let gates = lapi_gates(&lapi);
    let ips = [BANNED, CLEAN];
    let open = wait_view(&gates.open, &ips, "errors counted (open)", |v| {
        v.sync_errors >= 2.0
    })
    .await;
    let closed = wait_view(&gates.closed, &ips, "errors counted (closed)", |v| {
        v.sync_errors >= 2.0
    })
    .await;
    assert_eq!(open.ready, 503, "never synced: not ready");
    assert_eq!(open.status(BANNED), 200, "fail-open knows no decision yet");
    assert_eq!(open.status(CLEAN), 200);
    assert_eq!(open.last_sync, 0.0);
    assert_eq!(closed.ready, 503);
    assert_eq!(
        closed.status(BANNED),
        403,
        "fail-closed before the first sync"
    );
    assert_eq!(
        closed.status(CLEAN),
        403,
        "fail-closed before the first sync"
    );

    lapi.set_fault(None);
    for gate in [&gates.open, &gates.closed] {
        wait_view(gate, &ips, "the first good sync", |v| {
            v.ready == 200 && v.status(BANNED) == 403 && v.status(CLEAN) == 200 && v.last_sync > 0.0
        })
        .await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A decision the LAPI leaves out of every delta (committed while a pull was being answered,
/// a race in the LAPI itself) reaches the gate at the next full resync
/// (`crowdsec.resync_interval`), without a restart or an error.
#[tokio::test]
async fn a_decision_missing_from_every_delta_arrives_with_the_periodic_resync() {
    let _exclusive = support::exclusive().await;
    use crate::support::fake_peer::{FakePeer, Reply};
    let hidden = Arc::new(AtomicBool::new(false));
    let peer = {
        let hidden = hidden.clone();
        FakePeer::start(move |seen| {
            let full = seen.query_param("startup") == Some("true");
            if full && hidden.load(Ordering::SeqCst) {
                Reply::json(
                    r#"{"new":[{"duration":"1h","id":7,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"203.0.113.50"}],"deleted":null}"#,
                )
            } else {
                Reply::json(r#"{"new":null,"deleted":null}"#)
            }
        })
    };
    let setup = Gate::setup();
    let key = setup.write_secret("key", "test-key");
    let gate = setup.start(&format!(
        "[crowdsec]\nlapi_url = \"{}\"\napi_key_file = \"{}\"\nupdate_interval = \"500ms\"\n\
         resync_interval = \"2s\"\n[rate_limit]\nper_second = 0\n",
        peer.url(),
        key.display()
    ));
    let ask = async || {
        gate.get(
            "/auth",
            &[
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "app.example.test"),
                ("X-Forwarded-Uri", "/"),
                ("X-Forwarded-For", "203.0.113.50"),
            ],
        )
        .await
        .0
    };
    eventually(Duration::from_secs(10), "the first sync", async || {
        let (status, _, body) = gate.get("/readyz", &[]).await;
        (status == 200).then_some(()).ok_or(body)
    })
    .await;
    assert_eq!(ask().await, 200);
    hidden.store(true, Ordering::SeqCst);
    eventually(
        Duration::from_secs(8),
        "the ban after a full resync",
        async || {
            let status = ask().await;
            (status == 403).then_some(()).ok_or(format!("{status}"))
        },
    )
    .await;
    let full = peer
        .seen()
        .iter()
        .filter(|s| s.query_param("startup") == Some("true"))
        .count();
    assert!(full >= 2, "full resyncs asked: {full}");
}
