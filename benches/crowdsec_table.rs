//! The CrowdSec decision table: lookups with 1M decisions loaded (99% single IPs, 1% ranges,
//! IPv4 and IPv6 mixed), and applying a startup stream of 100k decisions (JSON parse + build).
//! Expected on a 2-core machine: a miss ≤ 60 ns, a hit ≤ 80 ns, ≤ 40 MB per 1M decisions,
//! a 100k startup ≤ 100 ms. The memory figure is printed once, before the timings.

// `criterion_group!` defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jacker_gate::crowdsec::stream::parse_stream;
use jacker_gate::crowdsec::table::{DecisionTable, Target};

const NOW: u32 = 1_800_000_000;

fn lookups(c: &mut Criterion) {
    let n = if common::full_size() {
        1_000_000
    } else {
        10_000
    };
    let (delta, singles) = common::decisions(n, NOW);
    let before = common::rss_bytes();
    let table = DecisionTable::from_startup(&delta);
    let after = common::rss_bytes();
    drop(delta);
    eprintln!(
        "decision table: {n} decisions, RSS +{:.1} MB ({:.1} bytes per decision)",
        (after - before) as f64 / 1e6,
        (after - before) as f64 / n as f64
    );

    let mut rng = common::Rng::new(7);
    let misses: Vec<IpAddr> = (0..4096)
        .map(|i| {
            if i % 5 == 4 {
                IpAddr::V6(rng.v6())
            } else {
                IpAddr::V4(rng.v4())
            }
        })
        .filter(|ip| table.lookup(*ip, NOW).is_none())
        .collect();
    let hits: Vec<IpAddr> = singles
        .iter()
        .step_by(singles.len() / 4096 + 1)
        .copied()
        .collect();
    assert!(hits.iter().all(|ip| table.lookup(*ip, NOW).is_some()));

    let mut g = c.benchmark_group("crowdsec_table");
    let mut i = 0usize;
    g.bench_function("lookup_miss_1M", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(table.lookup(black_box(misses[i]), NOW))
        })
    });
    let mut j = 0usize;
    g.bench_function("lookup_hit_1M", |b| {
        b.iter(|| {
            j = (j + 1) % hits.len();
            black_box(table.lookup(black_box(hits[j]), NOW))
        })
    });
    g.finish();
}

fn startup_stream(c: &mut Criterion) {
    let n = if common::full_size() { 100_000 } else { 1_000 };
    let (delta, _) = common::decisions(n, NOW);
    // The JSON the LAPI sends, with its real field set.
    let mut body = String::from("{\"deleted\":null,\"new\":[");
    for (i, op) in delta.new.iter().enumerate() {
        let (scope, value) = match op.target {
            Target::Ip(ip) => ("Ip", ip.to_string()),
            Target::Range(net) => ("Range", net.to_string()),
        };
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"duration\":\"3h59m58.646682607s\",\"id\":{i},\"origin\":\"crowdsec\",\"scenario\":\"crowdsecurity/http-probing\",\"scope\":\"{scope}\",\"type\":\"ban\",\"value\":\"{value}\",\"uuid\":\"0b7c5e0a-0000-4000-8000-{i:012}\"}}"
        ));
    }
    body.push_str("]}");
    eprintln!(
        "startup stream: {n} decisions, {:.1} MB of JSON",
        body.len() as f64 / 1e6
    );
    let mut g = c.benchmark_group("crowdsec_stream");
    g.sample_size(10);
    g.bench_function("startup_100k_parse_and_build", |b| {
        b.iter_batched(
            || body.as_bytes(),
            |bytes| {
                let parsed = parse_stream(bytes, NOW).unwrap();
                black_box(DecisionTable::from_startup(&parsed.delta))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, lookups, startup_stream);
criterion_main!(benches);
