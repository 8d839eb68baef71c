//! The whole in-process decision for a public route, as `/auth` runs it minus the socket:
//! client IP walk over a 3-entry X-Forwarded-For → CrowdSec lookup with 100k decisions → rate
//! limit (high limit, never hit) → rule match with path normalisation.
//! Expected: ≤ 1 µs.

// `criterion_group!` defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use jacker_gate::client_ip::{client_ip, TrustedProxies};
use jacker_gate::config::{self};
use jacker_gate::crowdsec::table::DecisionTable;
use jacker_gate::decision::{decide, rate_key, CrowdsecState, Forwarded, Step, Verdict};
use jacker_gate::ratelimit::{Limiter, Outcome};
use jacker_gate::rules::Rules;

const NOW: u32 = 1_800_000_000;

fn public_route(c: &mut Criterion) {
    let n = if common::full_size() { 100_000 } else { 1_000 };
    let cfg = config::parse(
        r#"
[server]
trusted_proxies = ["192.168.71.0/24"]
[rate_limit]
per_second = 1000000
burst = 1000000
[[rules]]
host = "status.example.com"
policy = "public"
[[rules]]
path_prefix = "/admin"
policy = "deny"
"#,
        &[],
    )
    .unwrap();
    let trusted = TrustedProxies::new(&cfg.server.trusted_proxies);
    let limiter = Limiter::new(&cfg.rate_limit);
    let rules = Rules::new(cfg.rules.clone(), false);
    let (delta, _) = common::decisions(n, NOW);
    let table = DecisionTable::from_startup(&delta);
    let mut rng = common::Rng::new(11);
    let headers: Vec<String> = (0..4096)
        .map(|_| format!("203.0.113.7, {}, 192.168.71.3", rng.v4()))
        .collect();
    let peer: IpAddr = "192.168.71.2".parse().unwrap();
    let mut i = 0usize;
    c.bench_function("decision_public_route", |b| {
        b.iter(|| {
            i = (i + 1) % headers.len();
            let xff = [headers[i].as_bytes()];
            let ip = client_ip(peer, xff.into_iter(), &trusted).unwrap();
            let cs = match table.lookup(ip, NOW) {
                Some(k) => CrowdsecState::Decided(k),
                None => CrowdsecState::Clear,
            };
            let req = Forwarded {
                method: Some("GET"),
                host: Some("App.Example.com:443"),
                uri: Some(b"/static/app.js?v=3"),
            };
            let rate = match rate_key(ip, &limiter, None) {
                Some(k) if cs.passes() => limiter.check(k),
                _ => Outcome::Allowed,
            };
            let v = decide(cs, rate, &rules, black_box(&req));
            debug_assert!(matches!(
                v,
                Step::Done(Verdict::Allow { .. } | Verdict::Banned(_))
            ));
            black_box(v)
        })
    });
}

criterion_group!(benches, public_route);
criterion_main!(benches);
