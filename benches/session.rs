//! A request on a `login` route with a valid session cookie: the whole in-process decision
//! (client IP → CrowdSec → rate limit → rule → cookie verify → session lookup → email policy).
//! Warm: the session is in this replica's cache. Cold: the cache is off, so every lookup is one
//! round trip to a real Redis (started here on a free loopback port).
//! Expected: warm ≤ 2 µs; cold = one Redis round trip (~20–60 µs here) and no more.

// `criterion_group!` defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jacker_gate::client_ip::{client_ip, TrustedProxies};
use jacker_gate::clock::Now;
use jacker_gate::config;
use jacker_gate::crowdsec::table::DecisionTable;
use jacker_gate::decision::{
    decide, rate_key, session_verdict, CrowdsecState, Forwarded, SessionState, Step, Verdict,
};
use jacker_gate::oauth::email::EmailPolicy;
use jacker_gate::ratelimit::{Limiter, Outcome};
use jacker_gate::rules::Rules;
use jacker_gate::session::cookie::CookieCodec;
use jacker_gate::session::memory::MemoryStore;
use jacker_gate::session::redis::RedisStore;
use jacker_gate::session::{SessionStore, Sessions};

const NOW: u32 = 1_800_000_000;

struct RedisServer(Child, u16);

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for the cold-session bench: run `bash scripts/install-test-deps.sh`");
        // Owned from here on, so Drop kills and reaps it on every path.
        let server = Self(child, port);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_store(
    c: &mut Criterion,
    name: &str,
    store: Arc<dyn SessionStore>,
    cache_ttl: Duration,
    rt: &tokio::runtime::Runtime,
) {
    let cfg = config::parse(
        "[server]\ntrusted_proxies = [\"192.168.71.0/24\"]\n[rate_limit]\nper_second = 1000000\nburst = 1000000\n",
        &[],
    )
    .unwrap();
    let trusted = TrustedProxies::new(&cfg.server.trusted_proxies);
    let limiter = Limiter::new(&cfg.rate_limit);
    let rules = Rules::new(Vec::new(), true);
    let emails = EmailPolicy::new(
        &[jacker_gate::domain::DomainName::parse("example.com").expect("valid literal")],
        &[],
        true,
    );
    let (delta, _) = common::decisions(if common::full_size() { 100_000 } else { 1_000 }, NOW);
    let table = DecisionTable::from_startup(&delta);
    let sessions = rt.block_on(async {
        Sessions::new(
            store,
            CookieCodec::new(&[5u8; 32]),
            cache_ttl,
            Duration::from_secs(3600),
        )
    });
    let now = Now::from_unix_secs(u64::from(NOW));
    let cookie = rt
        .block_on(sessions.create("alice@example.com", now))
        .unwrap();
    let peer: IpAddr = "192.168.71.2".parse().unwrap();
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            let xff = [&b"203.0.113.7, 198.51.100.23, 192.168.71.3"[..]];
            let ip = client_ip(peer, xff.into_iter(), &trusted).unwrap();
            let cs = match table.lookup(ip, NOW) {
                Some(k) => CrowdsecState::Decided(k),
                None => CrowdsecState::Clear,
            };
            let req = Forwarded {
                method: Some("GET"),
                host: Some("app.example.com"),
                uri: Some(b"/dashboard?tab=2"),
            };
            let rate = match rate_key(ip, &limiter, None) {
                Some(k) if cs.passes() => limiter.check(k),
                _ => Outcome::Allowed,
            };
            let v = match decide(cs, rate, &rules, &req) {
                Step::NeedsSession => {
                    let s = match sessions.resolve([cookie.as_str()].into_iter(), now).await {
                        Ok(Some(email)) => SessionState::Valid { email },
                        Ok(None) => SessionState::None,
                        Err(_) => SessionState::StoreUnavailable,
                    };
                    session_verdict(&s, &emails)
                }
                Step::Done(v) => v,
                Step::Gate(_) => unreachable!("not a gate page"),
            };
            debug_assert!(matches!(v, Verdict::Allow { user: Some(_) }));
            black_box(v)
        })
    });
}

fn sessions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_store(
        c,
        "session_warm_cache",
        MemoryStore::new(),
        Duration::from_secs(3600),
        &rt,
    );
    let redis = RedisServer::start();
    let store = rt
        .block_on(RedisStore::connect(
            &jacker_gate::config::RedisTarget::Single(format!("redis://127.0.0.1:{}/0", redis.1)),
            None,
            Duration::from_secs(1),
        ))
        .unwrap();
    bench_store(c, "session_cold_redis", store, Duration::ZERO, &rt);
}

criterion_group!(benches, sessions);
criterion_main!(benches);
