//! The HTTP edge over a real socket: the gate binary on a free port, driven with well-formed
//! and malformed requests. Where the README forbids a 2xx there is none, and the gate keeps serving.

use crate::support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::gate::Gate;
use crate::support::peer::Peer;

const RULES: &str = r#"
[rate_limit]
per_second = 0

[[rules]]
path_prefix = "/admin"
policy = "deny"
"#;

fn fwd<'a>(uri: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", client),
    ]
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn raw_request(extra_headers: &str) -> Vec<u8> {
    format!(
        "GET /auth HTTP/1.1\r\nHost: gate\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Host: app.example.com\r\nX-Forwarded-Uri: /\r\nX-Forwarded-For: 192.0.2.1\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn defaults_answer_and_route() {
    let gate = Gate::start("");
    let first = gate.logs().lines().next().unwrap_or_default().to_owned();
    // The harness always passes --config; the defaults line is checked in cli.rs.
    assert!(first.contains("config loaded"), "{first}");
    assert_eq!(gate.get("/auth", &fwd("/", "192.0.2.1")).await.0, 200);
    assert_eq!(gate.get("/healthz", &[]).await.0, 200);
    assert_eq!(gate.get("/readyz", &[]).await.0, 200);
    assert_eq!(gate.get("/nope", &[]).await.0, 404);
    assert_eq!(gate.get("/healthz/x", &[]).await.0, 404);
}

#[tokio::test]
async fn deny_rules_and_forwarded_garbage() {
    let gate = Gate::start(RULES);
    assert_eq!(
        gate.get("/auth", &fwd("/admin/x", "192.0.2.1")).await.0,
        403
    );
    assert_eq!(
        gate.get("/auth", &fwd("/static/../admin", "192.0.2.1"))
            .await
            .0,
        403
    );
    assert_eq!(
        gate.get("/auth-request", &fwd("/admin", "192.0.2.1"))
            .await
            .0,
        403
    );
    for (uri, client) in [
        ("/a%2Fb", "192.0.2.1"),
        ("/%", "192.0.2.1"),
        ("/..", "192.0.2.1"),
        ("/", "garbage"),
        ("/", "192.0.2.1, , 127.0.0.1"),
        ("/", "999.1.1.1"),
    ] {
        let (status, _, _) = gate.get("/auth", &fwd(uri, client)).await;
        assert_eq!(status, 400, "uri {uri:?} client {client:?}");
    }
    // Missing forwarded headers from a trusted proxy: 400, never 200.
    assert_eq!(gate.get("/auth", &[]).await.0, 400);
    let metrics = gate.metrics().await;
    assert!(
        support::metric_sum(
            &metrics,
            "jacker_gate_requests_total",
            &[("verdict", "error")]
        )
        .unwrap_or(0.0)
            >= 7.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_heads_never_pass() {
    let gate = Gate::start("[server]\nmax_header_bytes = 4096\n[rate_limit]\nper_second = 0\n");
    let ok = gate.raw(&raw_request(""));
    assert_eq!(
        status_of(&ok),
        Some(200),
        "{}",
        String::from_utf8_lossy(&ok)
    );

    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "one huge header",
            raw_request(&format!("X-Big: {}\r\n", "a".repeat(40_000))),
            &[431],
        ),
        (
            "over max_header_bytes",
            raw_request(&format!("X-Big: {}\r\n", "a".repeat(5_000))),
            &[431],
        ),
        (
            "many headers",
            raw_request(
                &(0..150)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            &[431],
        ),
        (
            "obs-text in X-Forwarded-Host",
            {
                let mut r = raw_request("");
                let at = r.windows(15).position(|w| w == b"app.example.com").unwrap();
                r[at] = 0xff;
                r
            },
            &[400],
        ),
        (
            "NUL in a header value",
            raw_request("X-Evil: a\0b\r\n"),
            &[400],
        ),
        (
            "bare LF line",
            b"GET /auth HTTP/1.1\nHost: x\n\n".to_vec(),
            &[400, 200],
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00 hello\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "header without colon",
            raw_request("NoColonHere\r\n"),
            &[400],
        ),
        (
            "space before colon",
            raw_request("X-Forwarded-Uri : /admin\r\n"),
            &[400],
        ),
        (
            "two X-Forwarded-Uri",
            raw_request("X-Forwarded-Uri: /admin\r\n"),
            &[400],
        ),
    ];
    for (name, bytes, allowed) in cases {
        let response = gate.raw(&bytes);
        let status = status_of(&response);
        if name == "bare LF line" {
            // hyper accepts bare LF line endings; the request then has no forwarded headers
            // and must not be allowed.
            assert_ne!(status, Some(200), "{name}");
            continue;
        }
        assert!(
            status.is_none_or(|s| allowed.contains(&s)),
            "{name}: got {status:?}: {}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
        assert!(status.is_none_or(|s| !(200..300).contains(&s)), "{name}");
    }
    // Still serving.
    assert_eq!(gate.get("/healthz", &[]).await.0, 200);
}

#[tokio::test]
async fn slow_heads_are_cut_off() {
    let _exclusive = support::exclusive().await;
    let gate = Gate::start("[server]\nheader_read_timeout = \"1s\"\n");
    let mut stream = TcpStream::connect(gate.addr()).unwrap();
    stream
        .write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    // Dribble one byte a while, as a slowloris client does, until the gate hangs up.
    let _ = stream.write_all(b"X");
    let _ = stream.read_to_end(&mut buf);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "connection held for {elapsed:?}"
    );
    assert!(
        status_of(&buf).is_none_or(|s| s == 408),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let gate = Gate::start("[rate_limit]\nper_second = 0\n");
    let one = "GET /auth HTTP/1.1\r\nHost: gate\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Host: a\r\nX-Forwarded-Uri: /\r\n\r\n";
    let last = "GET /healthz HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n";
    let response = gate.raw(format!("{one}{one}{one}{last}").as_bytes());
    let text = String::from_utf8_lossy(&response);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
}

#[tokio::test]
async fn rate_limit_over_a_socket() {
    let gate =
        Gate::start("[rate_limit]\nper_second = 1\nburst = 100\nexempt = [\"198.51.100.0/24\"]\n");
    for i in 0..100 {
        // A client that rotates a spoofed left-most entry is still one client.
        let spoof = format!("10.{}.{}.1, 192.0.2.50", i / 250, i % 250);
        let (status, _, _) = gate.get("/auth", &fwd("/", &spoof)).await;
        assert_eq!(status, 200, "request {i}");
    }
    let (status, headers, _) = gate.get("/auth", &fwd("/", "6.6.6.6, 192.0.2.50")).await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another client is unaffected; an exempt one is never limited.
    assert_eq!(gate.get("/auth", &fwd("/", "192.0.2.51")).await.0, 200);
    for _ in 0..150 {
        assert_eq!(gate.get("/auth", &fwd("/", "198.51.100.9")).await.0, 200);
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut gate = Gate::start("");
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(gate.addr()).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    let status = gate.terminate(Duration::from_secs(8));
    assert!(status.success(), "exit status {status:?}\n{}", gate.logs());
    assert!(gate.logs().contains("draining"), "{}", gate.logs());
}

// ---------------------------------------------------------------------------------------------
// The TLS listener (`server.tls_cert_file`, `tls_key_file`, `tls_client_ca_file`).

use crate::support::crowdsec::pki::{https_client, CertPair, TestCa};

/// A CA, the gate's certificate for `jacker-gate` and 127.0.0.1, and a client certificate.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
    server: CertPair,
    client: CertPair,
}

fn pki() -> Pki {
    let ca = TestCa::new("jacker-gate test CA");
    let dir = tempfile::tempdir().expect("pki dir");
    let server = ca.server_cert(dir.path(), "gate", "DNS:jacker-gate,IP:127.0.0.1");
    let client = ca.client_cert(dir.path(), "traefik", None, "traefik");
    Pki {
        ca,
        dir,
        server,
        client,
    }
}

fn tls_toml(p: &Pki, client_ca: bool) -> String {
    let mut toml = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        p.server.cert.display().to_string(),
        p.server.key.display().to_string()
    );
    if client_ca {
        toml.push_str(&format!(
            "tls_client_ca_file = {:?}\n",
            p.ca.cert().display().to_string()
        ));
    }
    toml.push_str("[rate_limit]\nper_second = 0\n");
    toml
}

/// An HTTPS client trusting the test CA, presenting `identity` when given.
fn tls_client(p: &Pki, identity: Option<&CertPair>) -> reqwest::Client {
    https_client(p.ca.cert(), identity)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `jacker-gate ARGS...`: status and output.
fn jacker_gate(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jacker-gate"))
        .args(args)
        .output()
        .unwrap()
}

/// `jacker-gate healthcheck --config` of a running gate: exits 0.
fn assert_healthcheck_passes(gate: &Gate) {
    let out = jacker_gate(&[
        "healthcheck".as_ref(),
        "--config".as_ref(),
        gate.config_path().as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn auth_over(client: &reqwest::Client, gate: &Gate) -> Result<reqwest::Response, String> {
    let mut request = client.get(format!("{}/auth", gate.url()));
    for (name, value) in fwd("/", "192.0.2.7") {
        request = request.header(name, value);
    }
    request
        .send()
        .await
        .map_err(|e| support::crowdsec::pki::error_chain(&e))
}

/// ALPN offers `h2` and `http/1.1`: an HTTP/2 client (Traefik's over TLS) and an HTTP/1.1 one
/// both get the decision; the healthcheck speaks TLS.
#[tokio::test]
async fn tls_listener_speaks_http2_and_http1_by_alpn() {
    let p = pki();
    let gate = Gate::start(&tls_toml(&p, false));
    assert!(gate.url().starts_with("https://"));
    let h2 = tls_client(&p, None);
    let answer = auth_over(&h2, &gate).await.unwrap();
    assert_eq!(
        (answer.status().as_u16(), answer.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let h1 = https_client(p.ca.cert(), None)
        .http1_only()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let answer = auth_over(&h1, &gate).await.unwrap();
    assert_eq!(
        (answer.status().as_u16(), answer.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // Plain HTTP on the TLS port is not served.
    let plain = gate.raw(&raw_request(""));
    assert!(
        status_of(&plain).is_none(),
        "{:?}",
        String::from_utf8_lossy(&plain)
    );

    assert_healthcheck_passes(&gate);
    // A plain-HTTP healthcheck URL says what to try instead.
    let url = format!("http://127.0.0.1:{}", gate.port());
    let out = jacker_gate(&["healthcheck".as_ref(), "--url".as_ref(), url.as_ref()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("use https://"), "{said}");
}

/// With `tls_client_ca_file`: a client presenting a certificate from the CA is served; one with
/// none gets no answer (only `/healthz`, for the healthcheck); one from another CA completes no
/// handshake.
#[tokio::test]
async fn mtls_serves_the_cas_clients_only() {
    let _exclusive = support::exclusive().await;
    let p = pki();
    let gate = Gate::start(&tls_toml(&p, true));
    let with_cert = tls_client(&p, Some(&p.client));
    let answer = auth_over(&with_cert, &gate).await.unwrap();
    assert_eq!(answer.status(), 200);

    let without = tls_client(&p, None);
    let refused = auth_over(&without, &gate).await;
    assert!(
        refused.is_err(),
        "answered without a client certificate: {refused:?}"
    );
    let health = without
        .get(format!("{}/healthz", gate.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A connection without a certificate is closed within seconds, even if the client never
    // sends anything (it cannot hold a slot Traefik needs).
    // `-quiet` implies `-ign_eof`: s_client keeps the connection open until the gate closes it.
    let mut command = std::process::Command::new("openssl");
    command
        .args(["s_client", "-quiet", "-alpn", "h2", "-connect"])
        .arg(gate.addr().to_string());
    let mut idle = Peer::new("openssl s_client");
    idle.spawn(command);
    // README: such a connection is served for at most 5 s; 15 s leaves room for a slow machine.
    let closed = idle.wait_exit(Duration::from_secs(15)).is_some();
    assert!(
        closed,
        "a connection without a client certificate stayed open:\n{}",
        idle.logs()
    );

    let other_ca = TestCa::new("someone else's CA");
    let stranger = other_ca.client_cert(p.dir.path(), "stranger", None, "stranger");
    let foreign = tls_client(&p, Some(&stranger));
    let refused = auth_over(&foreign, &gate).await;
    assert!(
        refused.is_err(),
        "answered a foreign client certificate: {refused:?}"
    );

    assert_healthcheck_passes(&gate);
}

/// `check-config` reads the certificate, key and client CA and lists every problem (exit 64):
/// what it accepts, the listener serves.
#[test]
fn check_config_refuses_bad_tls_files() {
    let p = pki();
    let dir = p.dir.path();
    let other = p.ca.server_cert(dir, "other", "DNS:other");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let der = dir.join("gate.der");
    let pem = std::fs::read_to_string(&p.server.cert).unwrap();
    std::fs::write(&der, pem.replace("CERTIFICATE", "NOT A CERTIFICATE")).unwrap();
    let check = |toml: String| {
        let file = dir.join("check.toml");
        std::fs::write(&file, toml).unwrap();
        let out = jacker_gate(&["check-config".as_ref(), "--config".as_ref(), file.as_ref()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let server = |cert: &std::path::Path, key: &std::path::Path, ca: Option<&std::path::Path>| {
        let mut t = format!(
            "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        if let Some(ca) = ca {
            t.push_str(&format!(
                "tls_client_ca_file = {:?}\n",
                ca.display().to_string()
            ));
        }
        t
    };
    let (code, said) = check(server(&p.server.cert, &p.server.key, Some(p.ca.cert())));
    assert_eq!(code, Some(0), "{said}");
    // What every client would refuse: no name to check, or a certificate for clients only.
    let no_san = p.ca.cert_with(
        dir,
        "no-san",
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    let client_only = p.ca.cert_with(
        dir,
        "client-only",
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n\
         subjectAltName=DNS:jacker-gate\n",
    );
    for (what, toml, needle) in [
        (
            "a leaf certificate as client CA",
            server(&p.server.cert, &p.server.key, Some(&p.client.cert)),
            "is not a CA certificate",
        ),
        (
            "no subjectAltName",
            server(&no_san.cert, &no_san.key, None),
            "no subjectAltName",
        ),
        (
            "extendedKeyUsage clientAuth only",
            server(&client_only.cert, &client_only.key, None),
            "does not allow serverAuth",
        ),
        (
            "key of another certificate",
            server(&p.server.cert, &other.key, None),
            "do not belong together",
        ),
        (
            "not PEM",
            server(&garbage, &p.server.key, None),
            "no PEM certificate",
        ),
        (
            "no certificate block",
            server(&der, &p.server.key, None),
            "no PEM certificate",
        ),
        (
            "key missing",
            server(&p.server.cert, &dir.join("nope.key"), None),
            "cannot read",
        ),
        (
            "client CA not PEM",
            server(&p.server.cert, &p.server.key, Some(&garbage)),
            "server.tls_client_ca_file",
        ),
        (
            // A missing certificate file and a client CA that is a key: both are named, and
            // the key given with it is not reported as missing a partner.
            "missing cert and a key as CA",
            server(&dir.join("nope.pem"), &p.server.key, Some(&p.server.key)),
            "server.tls_client_ca_file",
        ),
        (
            "X.509 v1 certificate",
            server(&v1_cert(dir, &p.server.key), &p.server.key, None),
            "X.509 v3",
        ),
        (
            "cert without key",
            format!(
                "[server]\ntls_cert_file = {:?}\n",
                p.server.cert.display().to_string()
            ),
            "go together",
        ),
    ] {
        let (code, said) = check(toml);
        assert_eq!(code, Some(64), "{what}: {said}");
        assert!(said.contains(needle), "{what}: {said}");
        if what == "missing cert and a key as CA" {
            assert!(
                said.contains("cannot read") && !said.contains("go together"),
                "{what}: {said}"
            );
        }
    }
}

/// A renewed certificate and key written over the old files are served without a restart.
#[tokio::test]
async fn a_renewed_certificate_is_picked_up_without_a_restart() {
    let p = pki();
    let gate = Gate::start(&tls_toml(&p, false));
    let served = || async {
        let client = https_client(p.ca.cert(), None)
            .tls_info(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let answer = client
            .get(format!("{}/healthz", gate.url()))
            .send()
            .await
            .unwrap();
        answer
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
            .expect("the peer certificate")
    };
    let before = served().await;
    let renewed =
        p.ca.server_cert(p.dir.path(), "renewed", "DNS:jacker-gate,IP:127.0.0.1");
    std::fs::copy(&renewed.key, &p.server.key).unwrap();
    std::fs::copy(&renewed.cert, &p.server.cert).unwrap();
    support::eventually(
        Duration::from_secs(25),
        "the renewed certificate",
        async || {
            let now = served().await;
            (now != before)
                .then_some(())
                .ok_or_else(|| "still the old one".to_owned())
        },
    )
    .await;
}

/// An HTTP/2 connection to the gate over TLS, presenting `identity` (what Traefik's forwardAuth
/// client holds) or no certificate.
async fn h2_connection(
    p: &Pki,
    gate: &Gate,
    identity: Option<&CertPair>,
) -> h2::client::SendRequest<bytes::Bytes> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(p.ca.cert()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from_pem_file(&identity.cert).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_file(&identity.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("jacker-gate".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// Traefik resets a call's stream when its client goes away. A burst of such resets on the
/// one connection all calls share must not make the gate close it (h2's rapid-reset guard
/// allows 20 pending by default): the calls after the burst are answered on it.
#[tokio::test]
async fn a_burst_of_cancelled_calls_keeps_the_shared_connection() {
    let p = pki();
    let gate = Gate::start(&tls_toml(&p, true));
    let mut send = h2_connection(&p, &gate, Some(&p.client)).await;
    let request = || {
        let mut r = http::Request::get(format!("https://jacker-gate:{}/auth", gate.port()));
        for (name, value) in fwd("/", "192.0.2.7") {
            r = r.header(name, value);
        }
        r.body(()).unwrap()
    };
    for _ in 0..3 {
        // 200 calls sent and cancelled at once: they reach the gate in a few reads.
        let mut streams = Vec::new();
        for _ in 0..200 {
            send = send.ready().await.unwrap();
            let (response, mut stream) = send.send_request(request(), false).unwrap();
            stream.send_reset(h2::Reason::CANCEL);
            streams.push(response);
        }
        drop(streams);
        send = send.ready().await.unwrap();
        let (response, _) = send.send_request(request(), true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer within 5 s")
            .expect("the connection stays open after the resets");
        assert_eq!(answer.status(), 200);
    }
    assert!(!gate.logs().contains("too_many_resets"), "{}", gate.logs());
    // The connection's limits: enough for Traefik (Go opens another connection past them), and
    // for a connection without a certificate, enough for a liveness probe only.
    assert_eq!(send.current_max_send_streams(), 256);
    let anonymous = h2_connection(&p, &gate, None).await;
    let healthz = http::Request::get(format!("https://jacker-gate:{}/healthz", gate.port()))
        .body(())
        .unwrap();
    let (response, _) = anonymous.clone().send_request(healthz, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(anonymous.current_max_send_streams(), 2);
}

/// A new client CA written over the old file is used without a restart: the new CA's clients
/// are admitted, the old one's refused.
#[tokio::test]
async fn a_new_client_ca_is_picked_up_without_a_restart() {
    let p = pki();
    let ca_file = p.dir.path().join("client-ca.pem");
    std::fs::copy(p.ca.cert(), &ca_file).unwrap();
    let toml = tls_toml(&p, false).replace(
        "[rate_limit]",
        &format!(
            "tls_client_ca_file = {:?}\n[rate_limit]",
            ca_file.display().to_string()
        ),
    );
    let gate = Gate::start(&toml);
    let old_client = tls_client(&p, Some(&p.client));
    assert_eq!(auth_over(&old_client, &gate).await.unwrap().status(), 200);

    let new_ca = TestCa::new("the next client CA");
    let new_cert = new_ca.client_cert(p.dir.path(), "traefik-next", None, "traefik");
    // Written in place, as a Docker secret file is updated.
    std::fs::write(&ca_file, std::fs::read(new_ca.cert()).unwrap()).unwrap();
    support::eventually(
        Duration::from_secs(25),
        "the new client CA",
        async || match auth_over(&tls_client(&p, Some(&new_cert)), &gate).await {
            Ok(answer) if answer.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let refused = auth_over(&tls_client(&p, Some(&p.client)), &gate).await;
    assert!(refused.is_err(), "the old CA's client: {refused:?}");
    assert!(
        gate.logs().contains("TLS client CA reloaded"),
        "{}",
        gate.logs()
    );
}

/// A self-signed X.509 v1 certificate for `key` (what `openssl x509 -req` makes without
/// `-extfile`).
fn v1_cert(dir: &std::path::Path, key: &std::path::Path) -> std::path::PathBuf {
    let csr = dir.join("v1.csr");
    let cert = dir.join("v1.pem");
    for args in [
        vec!["req", "-new", "-subj", "/CN=v1", "-key"],
        vec!["x509", "-req", "-days", "1", "-signkey"],
    ] {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(&args).arg(key);
        if args[0] == "req" {
            cmd.arg("-out").arg(&csr);
        } else {
            cmd.arg("-in").arg(&csr).arg("-out").arg(&cert);
        }
        let out = cmd.output().expect("run openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cert
}
