//! Three gate replicas behind the real Traefik in the replica shape of the deployment
//! (`compose/replicas.yml`): the shipped static and dynamic Traefik files with `JACKER_GATE_POOL`
//! set, so that both forwardAuth middlewares dial Traefik's loopback `gate-pool` entrypoint and its
//! router spreads the calls over the replicas; the replicas share one real Redis for sessions and
//! the rate limit (`rate_limit.store = "redis"`, set through the environment as the overlay does).
//!
//! Covered: the files load without error and the template switches the middlewares to the pool;
//! every replica answers; the hop is not in the access log; the gates judge the real client (one
//! shared budget per client, another client unaffected); the browser login; identity headers in
//! every spelling never reach a backend; one replica stopped costs no decision and lets nothing
//! through that should be refused.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::gate::Gate;
use crate::support::login::{trail, LoginGate, Store};
use crate::support::oidc::{OidcProvider, ALICE};
use crate::support::redis::Redis;
use crate::support::reserve_port;
use crate::support::traefik::Traefik;
use crate::support::upstream::Upstream;
use crate::support::web::Response;

use super::traefik::{client, forged_identities_never_arrive, navigate_all, DeploymentFiles, AUTH};

/// Each client's budget: `BURST` at once, `PER_SECOND` more each second, for all replicas.
const BURST: u32 = 8;
const PER_SECOND: u32 = 1;

/// What the overlay sets on every replica (compose/replicas.yml).
const SHARED_LIMIT: (&str, &str) = ("JACKER_GATE_RATE_LIMIT__STORE", "redis");

/// The pool's health check (`gate-pool.toml`: every 2 s, 1 s timeout): how long a stopped replica
/// may still be picked, with a second of slack.
const HEALTH_BOUND: Duration = Duration::from_secs(4);

/// Decision lines (debug, JSON) a gate logged with `ip` as the client it judged.
fn decisions_for(gate: &Gate, ip: IpAddr) -> usize {
    let client = format!("\"client\":\"{ip}\"");
    gate.logs()
        .lines()
        .filter(|l| l.contains("\"decision\"") && l.contains(&client))
        .count()
}

#[tokio::test]
async fn three_replicas_behind_traefiks_gate_pool_share_the_limit_and_survive_one_stopping() {
    let _guard = support::exclusive().await;
    let files = DeploymentFiles::new();
    let redis = Redis::start();
    let websecure = files.websecure;
    let public_url = format!("https://{AUTH}:{websecure}");
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("{public_url}/oauth2/callback"))
        .start();
    let mut gates: Vec<Gate> = (0..3)
        .map(|_| {
            LoginGate::new(&idp, reserve_port())
                .public_url(&public_url)
                .redirect_domains(&[&format!(".example.test:{websecure}")])
                .cookie_domains(&[".example.test"])
                .store(Store::Redis(redis.url()))
                .rate_limit(PER_SECOND, BURST)
                .env(SHARED_LIMIT.0, SHARED_LIMIT.1)
                // Traefik's peer address and its loopback hop are both 127.0.0.1 here.
                .server(&format!(
                    "trusted_proxies = [\"127.0.0.1/32\"]\n{}",
                    files.gate_tls()
                ))
                .extra(
                    "[[rules]]\npath_prefix = \"/admin\"\npolicy = \"deny\"\n\
                     [[rules]]\nhost = \"authentik.example.test\"\npolicy = \"public\"\n\
                     [log]\nlevel = \"jacker_gate=debug\"\n",
                )
                .start()
        })
        .collect();
    let upstream = Upstream::start();
    let urls: Vec<String> = gates.iter().map(Gate::url).collect();
    let pool: Vec<String> = gates
        .iter()
        .map(|g| format!("127.0.0.1:{}", g.port()))
        .collect();
    let traefik = files
        .traefik(Traefik::setup(), &urls, &upstream)
        .env("JACKER_GATE_POOL", &pool.join(" "))
        .await_router("gate-pool")
        .start();
    let logs = |gates: &[Gate]| {
        let mut out = format!("traefik log:\n{}\n", traefik.log());
        for (i, g) in gates.iter().enumerate() {
            out.push_str(&format!("gate {i}:\n{}\n", g.logs()));
        }
        out
    };

    // Loaded without an error; the template pointed both middlewares at the pool, whose three
    // servers pass the health check.
    let errors = traefik.error_lines();
    assert!(errors.is_empty(), "errors:\n{}", errors.join("\n"));
    for warning in traefik.warning_lines() {
        for unwanted in ["aliasHeadersStrategy", "maxResponseBodySize", "deprecated"] {
            assert!(!warning.contains(unwanted), "warning: {warning}");
        }
    }
    let pool_address = format!("http://127.0.0.1:{}/auth", files.gate_pool);
    for name in ["jacker-gate", "jacker-gate-public"] {
        let mw = traefik.api(&format!("http/middlewares/{name}@file"));
        assert_eq!(mw["forwardAuth"]["address"], pool_address.as_str(), "{mw}");
    }
    for kind in ["routers", "middlewares", "services"] {
        let list = traefik.api(&format!("http/{kind}"));
        for item in list.as_array().expect("list") {
            assert_eq!(item["status"], "enabled", "{kind}: {item}");
        }
    }
    let router = traefik.api("http/routers/gate-pool@file");
    assert_eq!(router["entryPoints"], serde_json::json!(["gate-pool"]));
    let up = |traefik: &Traefik| -> Vec<String> {
        let service = traefik.api("http/services/gate-pool@file");
        let mut up: Vec<String> = service["serverStatus"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, status)| *status == "UP")
            .map(|(url, _)| url.clone())
            .collect();
        up.sort();
        up
    };
    let mut all: Vec<String> = urls.clone();
    all.sort();
    support::eventually(
        Duration::from_secs(10),
        "every replica UP in the pool",
        async || {
            let now = up(&traefik);
            (now == all).then_some(()).ok_or(format!("{now:?}"))
        },
    )
    .await;

    let home = format!("https://home.example.test:{websecure}/");
    let public = format!("https://authentik.example.test:{websecure}/");

    // A browser logs in through the pool: the login state and the session are in Redis, so it
    // does not matter which replica starts the login, finishes it, or judges the next request.
    let browser = files.browser(client(80));
    let chain = navigate_all(&browser, &idp, &home, ALICE).await;
    let last = chain.last().expect("chain");
    assert_eq!(
        (last.status, last.url.as_str()),
        (200, home.as_str()),
        "{}\n{}",
        trail(&chain),
        logs(&gates)
    );
    // Without a session a browser is sent to the login at the public URL: the hop kept the
    // X-Forwarded-Proto and -Host the middleware set, so the gate sees https and the real host.
    let anonymous = files.browser(client(79));
    let page = anonymous
        .get(&home, &[("Accept", "text/html"), ("Cookie", "unrelated=1")])
        .await;
    assert_eq!(page.status, 302, "{}", page.describe());
    let location = page.location().expect("Location");
    assert_eq!(
        (location.scheme(), location.host_str(), location.port()),
        ("https", Some(AUTH), Some(websecure)),
        "{}",
        page.describe()
    );
    assert!(location.path().starts_with("/oauth2/start"), "{location}");
    assert!(
        location.as_str().contains("home.example.test"),
        "{location}"
    );

    // No identity header a client sends, in any spelling, reaches a backend through the pool.
    forged_identities_never_arrive(
        &browser,
        &[
            (home.clone(), vec![ALICE.to_owned()]),
            (public.clone(), vec![]),
        ],
    )
    .await;

    // One client's budget is one for all replicas: of 3 × BURST requests in a row, about BURST
    // pass (each replica on its own budget would pass them all), the rest are 429 with
    // Retry-After; another client is not affected. Every replica judged the client, by its own
    // address (not Traefik's, not the hop's 127.0.0.1).
    let greedy_ip = client(81);
    let greedy = files.browser(greedy_ip);
    let t0 = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..3 * BURST {
        let page = greedy.get(&public, &[]).await;
        if page.status == 429 {
            assert!(page.header("retry-after").is_some(), "{}", page.describe());
        }
        statuses.push(page.status);
    }
    let elapsed = t0.elapsed();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(
        admitted + limited,
        u64::from(3 * BURST),
        "{statuses:?}\n{}",
        logs(&gates)
    );
    let most = u64::from(BURST) + u64::from(PER_SECOND) * (elapsed.as_secs() + 1);
    assert!(
        admitted >= u64::from(BURST) && admitted <= most,
        "admitted {admitted} of {} in {elapsed:?}, want {BURST}..={most}: {statuses:?}",
        3 * BURST
    );
    for (i, gate) in gates.iter().enumerate() {
        assert!(
            decisions_for(gate, greedy_ip) > 0,
            "gate {i} judged no request of {greedy_ip}: the pool does not spread /auth\n{}",
            logs(&gates)
        );
        assert_eq!(
            decisions_for(gate, IpAddr::from([127, 0, 0, 1])),
            0,
            "gate {i} judged 127.0.0.1 as the client\n{}",
            gate.logs()
        );
    }
    let other = files.browser(client(82)).get(&public, &[]).await;
    assert_eq!(other.status, 200, "{}", other.describe());

    // The hop is not in the access log (CrowdSec reads it): every line is a client's request.
    let access = traefik.access_log();
    assert!(!access.is_empty());
    for line in access.lines() {
        assert!(
            !line.contains("gate-pool") && !line.starts_with("127.0.0.1 "),
            "the hop was logged: {line}"
        );
    }

    // One replica stops. Until the health check leaves it out (and after), every request gets a
    // decision: allowed clients 200 (the retry sends a refused call to another replica), the deny
    // rule 403, the limited client no more than its refill; never a 2xx that should be refused,
    // and a 5xx at most within the health check's bound.
    gates[1].stop();
    let stopped = Instant::now();
    let mut failures: Vec<(Duration, String, u16)> = Vec::new();
    let mut greedy_admitted = 0u64;
    let mut round = 0u8;
    while stopped.elapsed() < HEALTH_BOUND + Duration::from_secs(2) {
        let fresh = files.browser(client(100 + round % 100));
        round = round.wrapping_add(1);
        let checks: [(&str, Response, &[u16]); 3] = [
            ("public", fresh.get(&public, &[]).await, &[200]),
            (
                "denied",
                fresh.get(&format!("{public}admin"), &[]).await,
                &[403],
            ),
            ("limited", greedy.get(&public, &[]).await, &[200, 429]),
        ];
        for (what, page, want) in checks {
            let at = stopped.elapsed();
            if what == "limited" && page.status == 200 {
                greedy_admitted += 1;
            }
            if !want.contains(&page.status) {
                assert!(
                    !(200..300).contains(&page.status),
                    "{what} answered {} {at:?} after a replica stopped\n{}",
                    page.status,
                    logs(&gates)
                );
                failures.push((at, what.to_owned(), page.status));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (at, what, status) in &failures {
        assert!(
            *at < HEALTH_BOUND && *status >= 500,
            "{what}: {status} {at:?} after the stop (all: {failures:?})"
        );
    }
    // Its budget was spent at t0; since then it regains PER_SECOND a second, for all replicas.
    let since = t0.elapsed().as_secs() + 1;
    let most = u64::from(BURST) + u64::from(PER_SECOND) * since;
    assert!(
        admitted + greedy_admitted <= most,
        "the limited client passed {} times in {since} s (at most {most})",
        admitted + greedy_admitted
    );
    let now = up(&traefik);
    assert_eq!(now.len(), 2, "the stopped replica left the pool: {now:?}");
    assert!(!now.contains(&urls[1]), "{now:?}");
    eprintln!(
        "pool failover: {} answer(s) outside the decision set after a replica stopped: {failures:?}",
        failures.len()
    );
    drop(redis);
}
