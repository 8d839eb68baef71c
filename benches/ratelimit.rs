//! The rate limiter: one keyed check with 100k active keys, and memory per key.
//! Expected: ≤ 150 ns per check, ≤ 64 bytes per key.

// `criterion_group!` defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use jacker_gate::config::{RateKeyKind, RateLimit};
use jacker_gate::ratelimit::Limiter;

fn check(c: &mut Criterion) {
    let n = if common::full_size() { 100_000 } else { 1_000 };
    let limiter = Limiter::new(&RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
        key: RateKeyKind::Ip,
        ipv6_prefix: 64,
        exempt: Vec::new(),
    });
    let mut rng = common::Rng::new(3);
    let ips: Vec<IpAddr> = (0..n).map(|_| IpAddr::V4(rng.v4())).collect();
    let before = common::rss_bytes();
    for ip in &ips {
        limiter.check(limiter.ip_key(*ip).unwrap());
    }
    let after = common::rss_bytes();
    eprintln!(
        "rate limiter: {} keys, RSS +{:.1} MB ({:.1} bytes per key)",
        limiter.len(),
        (after - before) as f64 / 1e6,
        (after - before) as f64 / limiter.len() as f64
    );
    let mut i = 0usize;
    c.bench_function("ratelimit_check_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            let key = limiter.ip_key(black_box(ips[i])).unwrap();
            black_box(limiter.check(key))
        })
    });
}

criterion_group!(benches, check);
criterion_main!(benches);
