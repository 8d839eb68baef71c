//! The rate limit shared through Redis (`rate_limit.store = "redis"`), against a real
//! redis-server and real gate processes: three replicas together admit one replica's budget
//! (within 10%), and a replica whose Redis is gone judges by its own budget, says so, counts it,
//! and goes back to the shared budget when Redis returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::gate::Gate;
use crate::support::redis::Redis;
use crate::support::redis_ha::{RedisCluster, GATE_PASSWORD};
use crate::support::{eventually, metric_sum};

fn config(redis: &Redis, per_second: u32, burst: u32) -> String {
    format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n\
         [rate_limit]\nper_second = {per_second}\nburst = {burst}\nstore = \"redis\"\n\
         redis_url = \"{}\"\n",
        redis.url()
    )
}

const CLIENT: &str = "203.0.113.7";

/// 3 gates, one client hammering all of them for 3 s: what they admit together is
/// `burst + per_second × t` within 10%, where 3 local budgets would admit three times that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_one_budget_within_ten_percent() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let (per_second, burst) = (50u32, 100u32);
    let gates = replicas(&redis, per_second, burst);
    let run = Duration::from_secs(3);
    let admitted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    // Two callers per gate, so every gate always has a request in flight.
    for gate in gates.iter().chain(gates.iter()) {
        let (gate, admitted, sent) = (gate.clone(), admitted.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let status = ask(&gate, CLIENT).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match status {
                    200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {}
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let sent = sent.load(Ordering::Relaxed);
    let budget = f64::from(burst) + f64::from(per_second) * elapsed;
    let redis_calls = script_calls(&redis);
    eprintln!(
        "shared limit: {admitted} admitted of {sent} sent in {elapsed:.2} s by 3 gates; \
         budget {budget:.0} ({:.1}%); {redis_calls} script calls",
        100.0 * admitted / budget
    );
    assert!(
        sent as f64 > budget * 1.5,
        "the callers must outrun the budget for the test to mean anything: {sent} sent"
    );
    assert!(
        (admitted - budget).abs() <= budget * 0.1,
        "3 replicas admitted {admitted}, one budget over {elapsed:.2} s is {budget:.0}"
    );
    assert!(
        redis_calls < sent,
        "limited requests are answered locally until the bucket refills: {redis_calls} calls for {sent} requests"
    );
    // The bucket lives under the documented prefix and expires once it would be full again.
    let keys = redis.cli(&["--scan", "--pattern", "jacker-gate:rl:*"]);
    let key = keys.lines().next().expect("a bucket in Redis");
    let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 2_100,
        "burst / per_second = 2 s at most: {ttl}"
    );
    for gate in &gates {
        let m = gate.metrics().await;
        assert_eq!(
            metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]),
            Some(0.0)
        );
    }
}

/// The script calls Redis has run (`EVALSHA` and `EVAL`), from `INFO commandstats`.
fn script_calls(redis: &Redis) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `/auth` at `gate` for the client `ip` (from a trusted peer) on a public route: the status.
async fn ask(gate: &Gate, ip: &str) -> u16 {
    let headers = [
        ("X-Forwarded-For", ip),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Uri", "/"),
    ];
    gate.get("/auth", &headers).await.0
}

/// Three gates sharing `redis` with the limit `per_second`, `burst`.
fn replicas(redis: &Redis, per_second: u32, burst: u32) -> Vec<Arc<Gate>> {
    (0..3)
        .map(|_| Arc::new(Gate::start(&config(redis, per_second, burst))))
        .collect()
}

/// A client at three times its limit, its requests spread over 3 gates in turn as a load
/// balancer spreads them, paced rather than hammering: the replicas lend it tokens while its
/// bucket is more than half full, then ask Redis; together they still admit one budget within
/// 10%. And clients far below their limit are admitted without asking Redis: a single request
/// is forgiven, two are charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_clients_across_replicas_get_one_budget_and_quiet_ones_cost_little_redis() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let (per_second, burst) = (50u32, 100u32);
    let gates = replicas(&redis, per_second, burst);

    // 90 clients, each at one gate. One request each: admitted on loan; a second later the
    // loans come due and, each key's only one, are forgiven: no script call at all. Then two
    // requests each: the second finds the slack (1 for a burst of 100) in use, asks Redis and
    // carries the first one's charge.
    let each = async |requests: usize| {
        for i in 0..90u32 {
            let ip = format!("198.51.100.{}", 10 + i);
            for _ in 0..requests {
                assert_eq!(ask(&gates[i as usize % 3], &ip).await, 200);
            }
        }
    };
    each(1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        script_calls(&redis),
        0,
        "90 clients with one request each: admitted on loan, forgiven"
    );
    each(2).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let charged = script_calls(&redis);
    assert!(
        (30..=100).contains(&charged),
        "the second request of each client asks Redis: {charged} script calls"
    );

    let before = script_calls(&redis);
    let rate = 150u32;
    let run = Duration::from_secs(3);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let (mut sent, mut admitted) = (0u32, 0u32);
    let start = Instant::now();
    while start.elapsed() < run {
        tick.tick().await;
        match ask(&gates[sent as usize % 3], CLIENT).await {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
        sent += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let budget = f64::from(burst) + f64::from(per_second) * elapsed;
    eprintln!(
        "paced: {admitted} admitted of {sent} sent in {elapsed:.2} s; budget {budget:.0}; {} script calls",
        script_calls(&redis) - before
    );
    assert!(
        f64::from(sent) > budget * 1.3,
        "the client must outrun its budget: {sent} sent"
    );
    assert!(
        (f64::from(admitted) - budget).abs() <= budget * 0.1,
        "3 replicas admitted {admitted} of a paced client, one budget over {elapsed:.2} s is {budget:.0}"
    );
}

/// Redis stops: the replica judges by its own budget (burst 3, then 429; a client that spent
/// its budget before stays limited), counts the failures,
/// and `/readyz` still answers 200 saying so; Redis comes back: the shared budget is used again
/// (its key appears in Redis) and `/readyz` is plain "ready".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_falls_back_to_the_local_budget_and_recovers() {
    let _exclusive = support::exclusive().await;
    let mut redis = Redis::start();
    let gate = Gate::start(&config(&redis, 1, 3));
    let ask = |ip| ask(&gate, ip);
    let spent = [
        ask("198.51.100.1").await,
        ask("198.51.100.1").await,
        ask("198.51.100.1").await,
        ask("198.51.100.1").await,
    ];
    assert_eq!(spent, [200, 200, 200, 429], "the shared budget: burst 3");
    let (status, _, body) = gate.get("/readyz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    redis.stop();
    // The fallback goes on from what the client spent here, not from a full local burst.
    assert_eq!(ask("198.51.100.1").await, 429);
    let started = Instant::now();
    let statuses = [
        ask("198.51.100.2").await,
        ask("198.51.100.2").await,
        ask("198.51.100.2").await,
        ask("198.51.100.2").await,
    ];
    assert_eq!(statuses, [200, 200, 200, 429], "the local budget: burst 3");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a down Redis costs at most a timeout: {:?}",
        started.elapsed()
    );
    let m = gate.metrics().await;
    let errors = metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]).unwrap_or(0.0);
    assert!(errors >= 1.0, "store errors counted: {errors}");
    let (status, _, body) = gate.get("/readyz", &[]).await;
    assert_eq!(status, 200, "the gate still serves");
    assert!(body.contains("rate limit: local fallback"), "{body:?}");

    redis.start_again();
    eventually(
        Duration::from_secs(10),
        "/readyz without the fallback",
        async || match gate.get("/readyz", &[]).await {
            (200, _, body) if body == "ready\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(ask("198.51.100.3").await, 200);
    let keys = redis.cli(&["--scan", "--pattern", "jacker-gate:rl:*"]);
    assert_eq!(
        keys.lines().count(),
        1,
        "back on the shared budget: {keys:?}"
    );
    let m = gate.metrics().await;
    assert_eq!(
        metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]),
        Some(errors),
        "no new errors once Redis answers"
    );
}

/// On a Redis Cluster, as the gate's ACL user (the compose stack's commands): the script
/// reaches its key's node through `EVALSHA`, no call fails, and 2 replicas still admit one
/// budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_acl_user_shares_one_budget() {
    let _exclusive = support::exclusive().await;
    let cluster = RedisCluster::start();
    let (per_second, burst) = (20u32, 40u32);
    let gates: Vec<Arc<Gate>> = (0..2)
        .map(|_| {
            let setup = Gate::setup();
            let pw = setup.write_secret("redis_password", GATE_PASSWORD);
            Arc::new(setup.start(&format!(
                "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n\
                 [rate_limit]\nper_second = {per_second}\nburst = {burst}\nstore = \"redis\"\n\
                 redis_url = \"{}\"\nredis_password_file = \"{}\"\n",
                cluster.url(),
                pw.display()
            )))
        })
        .collect();
    let start = Instant::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for gate in &gates {
        let (gate, admitted) = (gate.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < Duration::from_secs(2) {
                if ask(&gate, CLIENT).await == 200 {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let budget = f64::from(burst) + f64::from(per_second) * start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    eprintln!("shared limit on a Cluster: {admitted} admitted, budget {budget:.0}");
    // Many clients at once (burst 40: no loans, every first request asks Redis): one batch
    // holds keys of several slots, sent as one script call per hash-tag shard, each to its
    // node; every client is admitted and the buckets spread over the masters.
    let asks = (0..48u32).map(|i| {
        let gate = gates[i as usize % 2].clone();
        async move { ask(&gate, &format!("198.51.100.{}", 10 + i)).await }
    });
    let statuses = futures_util::future::join_all(asks).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| {
            !n.cli(&["--scan", "--pattern", "jacker-gate:rl:*"])
                .trim()
                .is_empty()
        })
        .count();
    assert!(holding >= 2, "buckets on {holding} of 3 masters");
    for gate in &gates {
        let m = gate.metrics().await;
        assert_eq!(
            metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]),
            Some(0.0),
            "{}",
            gate.logs()
        );
    }
    assert!(
        (admitted - budget).abs() <= budget * 0.1,
        "2 replicas on a Cluster admitted {admitted}, one budget is {budget:.0}"
    );
}

/// A frozen Redis (SIGSTOP: connections hang instead of failing): a request waits at most the
/// store timeout, then the local budget judges it; once Redis thaws the fallback ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_timeout_then_the_local_budget() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let gate = Gate::start(&config(&redis, 1, 3));
    assert_eq!(ask(&gate, "198.51.100.10").await, 200, "connected to Redis");
    redis.pause();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(ask(&gate, "198.51.100.9").await);
    }
    let took = started.elapsed();
    let (status, _, body) = gate.get("/readyz", &[]).await;
    redis.resume();
    assert_eq!(status, 200, "the gate still serves");
    assert!(body.contains("rate limit: local fallback"), "{body:?}");
    assert_eq!(statuses, [200, 200, 200, 429], "the local budget: burst 3");
    assert!(
        took < Duration::from_millis(900),
        "one store timeout (100 ms), then no more waiting: {took:?}"
    );
    let m = gate.metrics().await;
    let errors = metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]).unwrap_or(0.0);
    assert!(errors >= 1.0, "the timeout is counted: {errors}");
    eventually(
        Duration::from_secs(10),
        "/readyz without the fallback",
        async || match gate.get("/readyz", &[]).await {
            (200, _, body) if body == "ready\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

/// A client steering its requests: it hammers one replica, which spends the shared bucket, and
/// sends the two others 15 requests (one fewer than their slack of loans) every 1.02 s. Each of
/// those is admitted on loan at once, but every loan is charged to the bucket within a second,
/// so the replicas learn it is empty and stop lending: together they still admit one budget
/// within 10% (burst 800, 20/s: 900 over 5 s; uncharged loans made it about 1,050).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loans_on_other_replicas_are_charged_even_below_their_slack() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let (per_second, burst) = (20u32, 800u32);
    let gates = replicas(&redis, per_second, burst);
    let run = Duration::from_secs(5);
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    // Gate 0: hammered, it spends the shared bucket.
    for _ in 0..2 {
        let (gate, admitted) = (gates[0].clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                if ask(&gate, CLIENT).await == 200 {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Gates 1 and 2: 15 requests (slack - 1) every 1.02 s, which never fill the slack.
    for gate in &gates[1..3] {
        let (gate, admitted) = (gate.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let mut pulse = 0u32;
            loop {
                let at = Duration::from_millis(1020) * pulse;
                if at >= run {
                    break;
                }
                tokio::time::sleep_until((start + at).into()).await;
                for _ in 0..15 {
                    if ask(&gate, CLIENT).await == 200 {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                pulse += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let budget = f64::from(burst) + f64::from(per_second) * elapsed;
    eprintln!(
        "steered: {admitted} admitted in {elapsed:.2} s; budget {budget:.0} ({:.1}%)",
        100.0 * admitted / budget
    );
    assert!(
        admitted <= budget * 1.1,
        "3 replicas admitted {admitted}, one budget over {elapsed:.2} s is {budget:.0}"
    );
}
