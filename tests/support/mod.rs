//! Shared helpers for the integration tests: real peers (CrowdSec LAPI, Redis, Traefik, an OpenID
//! provider, ...) and the gate binary, each started in its own temporary directory on 127.0.0.1
//! and stopped, by its PID, when dropped. Every process goes through one `peer::Peer`.
//!
//! Process lifecycle (start, stop, pause) is synchronous so that it works from `Drop` and from any
//! runtime; talking HTTP to the gate is async (reqwest). Nothing here ever binds or dials anything
//! but 127.0.0.1.

// Each test crate uses a subset of these helpers.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod crowdsec;
pub(crate) mod crowdsec_agent;
pub(crate) mod fake_peer;
pub(crate) mod gate;
pub(crate) mod login;
pub(crate) mod oidc;
pub(crate) mod peer;
pub(crate) mod proxy;
pub(crate) mod redis;
pub(crate) mod redis_ha;
pub(crate) mod traefik;
pub(crate) mod upstream;
pub(crate) mod web;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port that was free a moment ago: bind 127.0.0.1:0, take the port, release it. Another
/// process may take it before the peer binds it; see `peer` for how each peer handles that.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A free port that no other test of this process was given by this function: for ports chosen
/// before anything binds them (a gate's port is in the provider's redirect URI, a proxy's in the
/// gate's `redirect_domains`), so that two tests running at once cannot pick the same one.
pub(crate) fn reserve_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().expect("port registry");
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = free_port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Finds `name` on `PATH`; panics with the install hint when the peer is missing, so that a fresh
/// machine fails with the fix rather than with a spawn error.
pub(crate) fn require_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; the integration tests need real peers: \
                 run `bash scripts/install-test-deps.sh`"
            )
        })
}

/// Sends `signal` (`"STOP"`, `"CONT"`, `"TERM"`, ...) to exactly one process, by its PID.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A minimal blocking `GET` over HTTP/1.0, used for readiness polls during start-up where no async
/// runtime may be running. Returns the status code and the body.
pub(crate) fn blocking_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    blocking_request(addr, "GET", path, timeout)
}

/// A minimal blocking request without a body over HTTP/1.0; returns the status and the body.
pub(crate) fn blocking_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `probe` every 50 ms until it returns `Ok`, and panics after `timeout` with `what` and the
/// last observation (the `Err` text), so a failure says what was seen instead of only "timed out".
pub(crate) async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The blocking form of [`eventually`], for tests without a runtime: polls `probe` every 50 ms
/// until it returns `Ok`, and panics after `timeout` with `what` and the last observation.
pub(crate) fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs the tests of one binary that are heavy (a load, a flood, a browser) or that measure
/// time against a documented bound, one at a time: the machine may have two cores, and a
/// measured test must not share them with a load. Hold the guard for the whole test.
pub(crate) async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}

/// [`exclusive`] for a test without a runtime.
pub(crate) fn exclusive_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.blocking_lock()
}

/// One per test binary (each binary compiles its own copy of this module). A tokio mutex, not a
/// std one: a test that fails while holding it must not poison it for the others.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Samples of one metric family from a Prometheus text exposition: each sample's labels (in the
/// order written) and value. Only the exact `name` matches, not `name_bucket` and the like.
pub(crate) fn metric_samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once('}')?;
                (parse_labels(labels), value)
            } else if rest.starts_with(' ') {
                (Vec::new(), rest)
            } else {
                return None;
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include every `(key, value)` of `want` (values
/// compared ASCII-case-insensitively); `None` when no sample matches.
pub(crate) fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = metric_samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter().all(|(key, value)| {
                labels
                    .iter()
                    .any(|(k, v)| k == key && v.eq_ignore_ascii_case(value))
            })
        })
        .map(|(_, value)| value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start_matches(',');
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
        rest = after[end..].trim_start_matches(',');
    }
    labels
}
