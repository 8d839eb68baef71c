//! Resource limits (issue "Hardening", item 3), each over real sockets against the gate binary:
//! the cap on concurrent connections (and how connections that never finish a head give their
//! slot back), 10,000 `X-Forwarded-For` entries, and a flood of distinct client addresses that
//! must not grow the gate's memory without bound.
//!
//! Slow heads dribbled byte by byte, many or huge headers (431) and pipelining are in
//! tests/gate/forward_auth.rs. All traffic stays on 127.0.0.1: the client addresses of the floods are
//! only text in `X-Forwarded-For`.

use crate::support;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::fake_peer::FakeLapi;
use crate::support::gate::Gate;
use crate::support::{eventually, metric_sum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Connections.

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: gate.test\r\n\r\n";

/// Reads from `stream` until a whole `/healthz` answer ("ok\n" body) is in, or `timeout` passes
/// with nothing more arriving. Returns what arrived.
fn read_answer(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if received.ends_with(b"\r\n\r\nok\n") {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => break,
        }
    }
    received
}

fn is_ok_answer(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.1 200") && bytes.ends_with(b"\r\n\r\nok\n")
}

/// A connection that asked `/healthz` once and got its answer, and stays open (keep-alive).
fn idle_keep_alive(gate: &Gate) -> TcpStream {
    let mut stream = TcpStream::connect(gate.addr()).expect("connect");
    stream.write_all(HEALTHZ).expect("send");
    let answer = read_answer(&mut stream, Duration::from_secs(5));
    assert!(
        is_ok_answer(&answer),
        "a connection under the cap is served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    stream
}

/// `server.max_connections = 4`: four idle keep-alive connections take every slot; a fifth is
/// accepted by the kernel but not served — its request waits — until one of the four closes,
/// and is then answered at once.
#[test]
fn the_connection_cap_holds_a_fifth_connection_until_one_closes() {
    let _exclusive = support::exclusive_blocking();
    let gate = Gate::start(
        r#"
[server]
max_connections = 4
header_read_timeout = "30s"

[rate_limit]
per_second = 0
"#,
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| idle_keep_alive(&gate)).collect();

    let mut fifth = TcpStream::connect(gate.addr()).expect("the kernel accepts a fifth");
    fifth.write_all(HEALTHZ).expect("send");
    let early = read_answer(&mut fifth, Duration::from_millis(1500));
    assert!(
        early.is_empty(),
        "a fifth connection was served while four were open: {:?}",
        String::from_utf8_lossy(&early)
    );

    // The four are still served: the cap does not starve the connections it holds.
    held[3].write_all(HEALTHZ).expect("send again");
    assert!(is_ok_answer(&read_answer(
        &mut held[3],
        Duration::from_secs(5)
    )));

    drop(held.remove(0));
    let late = read_answer(&mut fifth, Duration::from_secs(10));
    assert!(
        is_ok_answer(&late),
        "the fifth connection is served once a slot is free: {:?}\n{}",
        String::from_utf8_lossy(&late),
        gate.logs()
    );

    // And now it is one of the four: a sixth waits in turn.
    let mut sixth = TcpStream::connect(gate.addr()).expect("connect");
    sixth.write_all(HEALTHZ).expect("send");
    assert!(read_answer(&mut sixth, Duration::from_millis(800)).is_empty());
    drop(fifth);
    assert!(is_ok_answer(&read_answer(
        &mut sixth,
        Duration::from_secs(5)
    )));
}

/// Connections that hold a slot without finishing a request head — silent from the start, or
/// idle after an answer — are closed after `header_read_timeout`, so they cannot keep the cap
/// full for ever (slowloris against `max_connections`).
#[test]
fn silent_and_idle_connections_give_their_slots_back() {
    let _exclusive = support::exclusive_blocking();
    let gate = Gate::start(
        r#"
[server]
max_connections = 4
header_read_timeout = "2s"

[rate_limit]
per_second = 0
"#,
    );
    let opened = Instant::now();
    let mut held: Vec<TcpStream> = vec![
        TcpStream::connect(gate.addr()).expect("connect"),
        TcpStream::connect(gate.addr()).expect("connect"),
        idle_keep_alive(&gate),
        idle_keep_alive(&gate),
    ];
    // One more sends half a head and stops.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ga")
        .expect("send");

    let mut waiting = TcpStream::connect(gate.addr()).expect("connect");
    waiting.write_all(HEALTHZ).expect("send");
    let early = read_answer(&mut waiting, Duration::from_millis(1000));
    assert!(early.is_empty(), "served while the cap was full");
    let answer = read_answer(&mut waiting, Duration::from_secs(8));
    let waited = opened.elapsed();
    assert!(
        is_ok_answer(&answer),
        "the waiting connection was never served: {:?}\n{}",
        String::from_utf8_lossy(&answer),
        gate.logs()
    );
    assert!(
        waited < Duration::from_secs(7),
        "served after {waited:?}; header_read_timeout is 2s"
    );
    // The holders were closed by the gate.
    for (i, stream) in held.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                // hyper may answer the half head with an error status before closing.
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "holder {i} is still open after header_read_timeout");
    }
}

// ---------------------------------------------------------------------------------------------
// 10,000 X-Forwarded-For entries.

/// A decision request whose `X-Forwarded-For` is `chain`, over a fresh connection.
fn auth_with_chain(chain: &str) -> Vec<u8> {
    format!(
        "GET /auth HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: app.example.test\r\nX-Forwarded-Uri: /\r\nX-Forwarded-For: {chain}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// `count` distinct addresses in 198.18.0.0/15 (the benchmarking range), as a chain.
fn spoofed(count: usize, salt: u32) -> Vec<String> {
    (0..count as u32)
        .map(|i| {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + salt * 50_000 + i).to_string()
        })
        .collect()
}

/// `X-Forwarded-For` with 10,000 entries, within a raised `max_header_bytes` (256 KiB): the
/// walk from the right finds the right client (a CrowdSec ban on it applies; a banned address
/// further left changes nothing; with every entry trusted the left-most is the client), quickly.
/// Past the limit the answer is 431, whether the gate's own count or hyper's buffer trips first.
#[test]
fn ten_thousand_forwarded_for_entries() {
    let _exclusive = support::exclusive_blocking();
    let lapi = FakeLapi::start();
    lapi.ban_ip("203.0.113.7");
    lapi.ban_ip("10.9.9.9");
    let setup = Gate::setup();
    let key = setup.write_secret("crowdsec_key", "key");
    let gate = setup.start(&format!(
        r#"
[server]
trusted_proxies = ["127.0.0.0/8", "10.0.0.0/8"]
max_header_bytes = 262144

[crowdsec]
lapi_url = "{}"
api_key_file = "{}"
update_interval = "1s"

[rate_limit]
per_second = 0
"#,
        lapi.url(),
        key.display()
    ));
    // Wait for the first sync.
    support::poll_until(
        Duration::from_secs(15),
        "the first sync",
        || match support::blocking_get(gate.addr(), "/readyz", Duration::from_secs(2)) {
            Ok((200, _)) => Ok(()),
            seen => Err(format!("/readyz: {seen:?}\n{}", gate.logs())),
        },
    );

    let chain = |mut entries: Vec<String>, client: &str| {
        entries.push(client.to_owned());
        entries.push("10.0.0.1".to_owned());
        entries.push("10.0.0.2".to_owned());
        assert_eq!(entries.len(), 10_000);
        entries.join(", ")
    };
    let banned_client = chain(spoofed(9_997, 0), "203.0.113.7");
    let other_client = chain(spoofed(9_997, 0), "203.0.113.8");
    let mut with_banned_left = spoofed(9_997, 1);
    with_banned_left[0] = "203.0.113.7".to_owned();
    let banned_only_left = chain(with_banned_left, "203.0.113.8");
    let mut all_trusted: Vec<String> = (0..9_999u32)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i).to_string())
        .collect();
    all_trusted.insert(0, "10.9.9.9".to_owned());
    let all_trusted = all_trusted.join(",");
    assert!(banned_client.len() > 100_000, "{}", banned_client.len());

    let cases = [
        (
            "the client right of 9,997 spoofed entries is banned",
            &banned_client,
            403,
        ),
        ("another client behind the same entries", &other_client, 200),
        (
            "a banned address far left is only a claim",
            &banned_only_left,
            200,
        ),
        (
            "every entry trusted: the left-most is the client",
            &all_trusted,
            403,
        ),
    ];
    for (what, chain, want) in cases {
        for _ in 0..3 {
            // `raw` waits at most 5 s for the first byte: a gate that chokes on the chain fails
            // the status check below.
            let response = gate.raw(&auth_with_chain(chain));
            assert_eq!(
                status_of(&response),
                Some(want),
                "{what}: {:?}",
                String::from_utf8_lossy(&response[..response.len().min(300)])
            );
        }
    }

    // Just over max_header_bytes (the gate's own count) and far over it (hyper's buffer).
    // The gate answers the first with its own body; hyper answers the second before the
    // gate sees the request.
    let mut just_over = other_client.clone();
    while just_over.len() < 262_144 + 1_000 {
        just_over.push_str(", 10.0.0.3");
    }
    let far_over = [other_client.as_str(); 3].join(", ");
    for (what, chain, body) in [
        ("just over", &just_over, Some("request headers too large")),
        ("far over", &far_over, None),
    ] {
        let response = gate.raw(&auth_with_chain(chain));
        let text = String::from_utf8_lossy(&response[..response.len().min(300)]);
        assert_eq!(
            status_of(&response),
            Some(431),
            "{what} max_header_bytes ({} bytes): {text:?}",
            chain.len()
        );
        if let Some(body) = body {
            assert!(text.contains(body), "{what}: {text:?}");
        }
    }
    // Still serving.
    assert_eq!(
        status_of(&gate.raw(&auth_with_chain(&other_client))),
        Some(200)
    );
}

// ---------------------------------------------------------------------------------------------
// A flood of distinct client addresses.

/// Sends `count` decision requests, each for a distinct client address from `address(i)`,
/// pipelined over `connections` keep-alive connections in batches; returns how many answers
/// had each status.
async fn flood(
    addr: SocketAddr,
    count: usize,
    connections: usize,
    address: AddressOf,
) -> std::collections::BTreeMap<u16, usize> {
    const BATCH: usize = 200;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let mut statuses = std::collections::BTreeMap::new();
                let mine: Vec<usize> = (c..count).step_by(connections).collect();
                let mut pending = bytes::BytesMut::new();
                for batch in mine.chunks(BATCH) {
                    let mut out = Vec::with_capacity(batch.len() * 200);
                    for &i in batch {
                        out.extend_from_slice(
                            format!(
                                "GET /auth HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-Method: GET\r\n\
                                 X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.test\r\n\
                                 X-Forwarded-Uri: /\r\nX-Forwarded-For: {}\r\n\r\n",
                                address(i)
                            )
                            .as_bytes(),
                        );
                    }
                    stream.write_all(&out).await.expect("send batch");
                    let mut answered = 0;
                    while answered < batch.len() {
                        while let Some(status) = take_response(&mut pending) {
                            *statuses.entry(status).or_insert(0) += 1;
                            answered += 1;
                        }
                        if answered == batch.len() {
                            break;
                        }
                        let mut buf = [0u8; 65536];
                        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                            .await
                            .expect("the gate answers within 10 s")
                            .expect("read");
                        assert!(n > 0, "the gate closed a keep-alive connection mid-flood");
                        pending.extend_from_slice(&buf[..n]);
                    }
                }
                statuses
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await.expect("flood task") {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

/// Takes one whole response (head and `Content-Length` body) off the front of `pending`.
fn take_response(pending: &mut bytes::BytesMut) -> Option<u16> {
    let head_end = pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&pending[..head_end]).expect("ASCII head");
    let status = head.get(9..12)?.parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    if pending.len() < head_end + length {
        return None;
    }
    let _ = pending.split_to(head_end + length);
    Some(status)
}

/// The client address of the `i`-th request of a flood.
type AddressOf = fn(usize) -> String;

/// Resident memory of a process, from /proc/PID/status, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

async fn ratelimit_keys(gate: &Gate) -> f64 {
    metric_sum(&gate.metrics().await, "jacker_gate_ratelimit_keys", &[]).unwrap_or(-1.0)
}

/// Rate limiting on (the defaults, 50/s with a burst of 100): 200,000 requests from 200,000
/// distinct client addresses. Each gets a bucket (`jacker_gate_ratelimit_keys` says so), the
/// gate's RSS stays under a generous bound, and after the limiter's cleanup (every 10 s; a
/// bucket is droppable once refilled, 2 s) the buckets are gone. A second flood of half as many new
/// addresses reuses the memory instead of adding to it. IPv6 clients inside one /64 share one
/// bucket, however many addresses they use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_client_addresses_does_not_grow_memory_without_bound() {
    let _exclusive = support::exclusive().await;
    const FLOOD: usize = 200_000;
    const RSS_BOUND_MIB: f64 = 150.0;
    let gate = Gate::start("[rate_limit]\nper_second = 50\nburst = 100\n");
    let pid = gate.pid().expect("gate pid");
    let rss_start = rss_mib(pid);

    // IPv6: 3,000 addresses of one /64 are one client.
    let v6 = flood(gate.addr(), 3_000, 2, |i| {
        format!("2001:db8:1:2::{:x}", i + 1)
    })
    .await;
    assert!(
        v6.get(&429).copied().unwrap_or(0) >= 2_000,
        "one /64 is one bucket: {v6:?}"
    );
    assert_eq!(ratelimit_keys(&gate).await, 1.0);

    // The second, smaller flood only checks that memory is reused rather than added to.
    let rounds: [(&str, usize, AddressOf); 2] = [
        ("first", FLOOD, |i| {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32).to_string()
        }),
        ("second", FLOOD / 2, |i| {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 72, 0, 0)) + i as u32).to_string()
        }),
    ];
    let mut peaks = Vec::new();
    for (round, count, address) in rounds {
        // Watch the bucket count and RSS while the flood runs: the limiter's cleanup (every
        // 10 s) may well run in the middle of it.
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let (watching, url) = (watching.clone(), format!("{}/metrics", gate.url()));
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("client");
                let (mut keys, mut rss) = (0.0f64, 0.0f64);
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(r) = client.get(&url).send().await {
                        let text = r.text().await.unwrap_or_default();
                        let now = metric_sum(&text, "jacker_gate_ratelimit_keys", &[]);
                        keys = keys.max(now.unwrap_or(0.0));
                    }
                    rss = rss.max(rss_mib(pid));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (keys, rss)
            })
        };
        let started = Instant::now();
        let statuses = flood(gate.addr(), count, 4, address).await;
        let took = started.elapsed();
        let rss_end = rss_mib(pid);
        let keys_end = ratelimit_keys(&gate).await;
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        let (peak_keys, peak_rss) = watcher.await.expect("watcher");
        let (peak_keys, peak_rss) = (peak_keys.max(keys_end), peak_rss.max(rss_end));
        println!(
            "{round} flood: {count} addresses in {took:?} ({:.0}/s), statuses {statuses:?}; \
             buckets at most {peak_keys}, {keys_end} at the end; RSS {rss_start:.1} MiB before, \
             at most {peak_rss:.1} MiB",
            count as f64 / took.as_secs_f64()
        );
        assert_eq!(
            statuses.get(&200).copied(),
            Some(count),
            "a fresh address is under its limit: {statuses:?}"
        );
        // A cleanup in the middle of the flood drops the buckets of the first half.
        assert!(
            peak_keys >= (count as f64) * 0.3,
            "{round}: tens of thousands of buckets at once (saw at most {peak_keys})"
        );
        assert!(
            peak_rss < RSS_BOUND_MIB,
            "{round}: RSS {peak_rss:.1} MiB during {count} addresses (bound {RSS_BOUND_MIB} MiB)"
        );
        peaks.push(peak_rss);
        if round == "second" {
            break;
        }
        let cleaned = Instant::now();
        let keys = eventually(
            Duration::from_secs(25),
            "the limiter cleanup to drop idle buckets",
            async || {
                let keys = ratelimit_keys(&gate).await;
                if keys <= 10.0 {
                    Ok(keys)
                } else {
                    Err(format!("{keys} buckets"))
                }
            },
        )
        .await;
        let rss_clean = rss_mib(pid);
        println!(
            "{round} cleanup: {keys} buckets {:?} after the flood, RSS {rss_clean:.1} MiB",
            cleaned.elapsed()
        );
        assert!(rss_clean < RSS_BOUND_MIB);
    }
    assert!(
        peaks[1] < peaks[0] + 30.0,
        "the second flood added to the first's memory instead of reusing it: {peaks:?} MiB"
    );
    // Still serving, still limiting.
    let (status, _, _) = gate
        .get(
            "/auth",
            &[
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "app.example.test"),
                ("X-Forwarded-Uri", "/"),
                ("X-Forwarded-For", "203.0.113.1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
}
