//! The gate talks to a CrowdSec Local API over HTTPS (rustls), against the real CrowdSec 1.4.6
//! serving `api.server.tls` with certificates from a CA each test makes with `openssl`:
//!
//! - With `crowdsec.ca_file` the gate syncs and enforces bans and is ready. Without it (public
//!   roots only), with another CA's `ca_file`, or when the LAPI's certificate names another
//!   host, the sync fails with a log line about the certificate, the error counter rises and
//!   `/readyz` stays 503 (and `fail_closed` then denies every request).
//! - Client certificates (`cert_file` + `key_file`): a LAPI with
//!   `client_verification: RequireAndVerifyClientCert` syncs the gate that presents one from its
//!   CA and refuses the handshake to a gate without one.
//!
//! What CrowdSec 1.4.6 does with a client certificate, checked here against the real thing
//! (`lapi_that_requires_certificates_authenticates_bouncers_by_certificate` pins it): a request
//! carrying a verified certificate is authenticated by the certificate *alone*. The LAPI does not
//! read `X-Api-Key` then (a wrong key passes, a right key does not rescue a certificate whose `OU`
//! is not in `bouncers_allowed_ou`: 403), and it creates the bouncer `<CN>@<ip>` with auth type
//! `tls` by itself. So under `RequireAndVerifyClientCert` the API key cannot be the credential at
//! all; the gate still sends it (harmless). The API-key path over TLS works wherever no
//! certificate is presented: a plain TLS LAPI, or `VerifyClientCertIfGiven` (both are tested,
//! and with `VerifyClientCertIfGiven` a gate with a certificate is authenticated by it). With
//! no `client_verification` at all 1.4.6 verifies any certificate a client sends against the
//! *system* roots, so a gate configured with a private-CA `cert_file` fails the handshake there:
//! set `client_verification` and `ca_cert_path` on the LAPI when giving the gate a certificate.
//!
//! TLS 1.3 (what Go and rustls agree on): the server judges the client's certificate only after
//! the client has finished its side of the handshake, so a rejection reaches the client as an
//! alert on the first read. Usually the error then reads "received fatal alert: BadCertificate",
//! but when the connection was already handed to the HTTP client it can read "connection was not
//! ready" instead (about 1 run in 25 under heavy parallel load). Where the server rejects a
//! client certificate, the tests therefore read the reason from the LAPI's log, and only demand a
//! transport failure from the gate. A rejected *server* certificate is always named (the client
//! decides that inside its handshake).

use crate::support;
use std::path::Path;
use std::time::Duration;

use super::crowdsec::{auth_status, expect_verdicts, wait_verdicts};
use crate::support::crowdsec::pki::{error_chain, https_client, CertPair, TestCa};
use crate::support::crowdsec::{ClientCerts, Lapi, LapiTls};
use crate::support::gate::Gate;
use crate::support::{eventually, metric_sum};
use serde_json::Value;

/// The gate's `crowdsec.update_interval` in every test here.
const UPDATE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a LAPI change may take to show on `/auth`.
const SYNC_DEADLINE: Duration = Duration::from_secs(5);
/// How long the gate may take to finish its first sync after start-up.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// The `OU` the harness's LAPI accepts for bouncers (`bouncers_allowed_ou`).
const BOUNCER_OU: &str = "bouncer-ou";
/// What the LAPI sees as the bouncer's type (the gate's `User-Agent` before the `/`).
const BOUNCER_TYPE: &str = "crowdsec-jacker-gate-bouncer";

// ---------------------------------------------------------------------------------------------
// The TLS LAPI as a client sees it (no gate involved).

/// The harness's TLS LAPI answers HTTPS with a certificate from the test CA, and only HTTPS: a
/// plain request gets Go's 400, a client that trusts another CA fails on the certificate, and
/// `cscli` (which trusts the CA) can still add decisions. A client certificate it was not set up
/// to verify breaks the handshake (see the module comment).
#[tokio::test]
async fn tls_lapi_speaks_https_only_with_a_certificate_from_the_test_ca() {
    let ca = TestCa::new("jacker-gate test CA");
    let other_ca = TestCa::new("some other CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca));
    assert!(
        lapi.url().starts_with("https://127.0.0.1:"),
        "{}",
        lapi.url()
    );

    let answer = plain_http_probe(&lapi);
    assert!(
        answer.starts_with("HTTP/1.0 400") && answer.contains("HTTPS"),
        "plain HTTP on the TLS port: {answer:?}"
    );

    let client = lapi_client(&ca, None);
    let (status, body) = get(&client, &lapi, None, "/health").await.expect("/health");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"up"}"#));

    let error = get(&lapi_client(&other_ca, None), &lapi, None, "/health")
        .await
        .expect_err("a client that trusts another CA accepted the LAPI");
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );

    lapi.add_ip("192.0.2.10", "ban", "1h");
    let key = lapi.bouncer_key("wire");
    let (status, body) = get(
        &client,
        &lapi,
        Some(&key),
        "/v1/decisions/stream?startup=true",
    )
    .await
    .expect("stream over HTTPS");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"192.0.2.10\""), "{body}");
    let (status, body) = get(&client, &lapi, Some("wrong"), "/v1/decisions/stream")
        .await
        .expect("stream over HTTPS");
    assert_eq!(status, 403, "a wrong key over HTTPS: {body}");

    // Without `client_verification`, 1.4.6 checks a certificate it did not ask for against the
    // system roots: one from the test CA breaks the handshake, valid key or not.
    let certs = tempfile::tempdir().expect("temp dir");
    let cert = ca.client_cert(certs.path(), "bouncer", Some(BOUNCER_OU), "wire-cert");
    get(
        &lapi_client(&ca, Some(&cert)),
        &lapi,
        Some(&key),
        "/v1/decisions/stream",
    )
    .await
    .expect_err("a LAPI without client_verification accepted a private-CA certificate");
    // The client's error may not say why (see "TLS 1.3" in the module comment); the LAPI's does.
    wait_lapi_log(&lapi, "failed to verify client certificate").await;
}

/// Pins CrowdSec 1.4.6's `RequireAndVerifyClientCert` (see the module comment): no certificate,
/// no handshake; a certificate from the CA with an allowed `OU` authenticates by itself, whatever
/// `X-Api-Key` says; a disallowed `OU` gets 403 even with a valid key; the bouncer the LAPI then
/// knows is `<CN>@127.0.0.1`, auth type `tls`.
#[tokio::test]
async fn lapi_that_requires_certificates_authenticates_bouncers_by_certificate() {
    let ca = TestCa::new("jacker-gate test CA");
    let other_ca = TestCa::new("some other CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca).client_certs(ClientCerts::Required));
    lapi.add_ip("192.0.2.10", "ban", "1h");
    let key = lapi.bouncer_key("wire");
    let certs = tempfile::tempdir().expect("temp dir");
    let bouncer = ca.client_cert(certs.path(), "bouncer", Some(BOUNCER_OU), "wire-cert");
    let wrong_ou = ca.client_cert(certs.path(), "ops", Some("ops"), "wire-ops");
    let foreign = other_ca.client_cert(certs.path(), "foreign", Some(BOUNCER_OU), "wire-foreign");
    let stream = "/v1/decisions/stream?startup=true";

    // The clients' errors may not say why (see "TLS 1.3" in the module comment); the LAPI's do.
    get(&lapi_client(&ca, None), &lapi, Some(&key), stream)
        .await
        .expect_err("the LAPI answered a client without a certificate");
    wait_lapi_log(&lapi, "client didn't provide a certificate").await;
    get(&lapi_client(&ca, Some(&foreign)), &lapi, Some(&key), stream)
        .await
        .expect_err("the LAPI answered a certificate from another CA");
    wait_lapi_log(&lapi, "failed to verify client certificate").await;

    for api_key in [Some(key.as_str()), Some("not-a-key"), None] {
        let (status, body) = get(&lapi_client(&ca, Some(&bouncer)), &lapi, api_key, stream)
            .await
            .expect("stream with a bouncer certificate");
        assert_eq!(
            status, 200,
            "certificate with X-Api-Key {api_key:?}: {body}"
        );
        assert!(body.contains("\"192.0.2.10\""), "{body}");
    }

    let (status, body) = get(
        &lapi_client(&ca, Some(&wrong_ou)),
        &lapi,
        Some(&key),
        stream,
    )
    .await
    .expect("stream with a certificate of another OU");
    assert_eq!(status, 403, "OU=ops with a valid key: {body}");
    wait_lapi_log(&lapi, "doesn't match expected OU").await;

    let by_cert = lapi_bouncer(&lapi, "wire-cert@127.0.0.1");
    assert_eq!(by_cert["auth_type"], "tls", "{by_cert}");
    let by_key = lapi_bouncer(&lapi, "wire");
    assert_eq!(by_key["auth_type"], "api-key", "{by_key}");
    // Sent along with a certificate, the key was never read: its bouncer never pulled.
    assert_eq!(by_key["ip_address"], "", "{by_key}");
    assert_eq!(by_key["type"], "", "{by_key}");
}

// ---------------------------------------------------------------------------------------------
// The gate against a TLS LAPI.

#[tokio::test]
async fn gate_syncs_from_an_https_lapi_with_ca_file_and_enforces_bans() {
    let ca = TestCa::new("jacker-gate test CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca));
    lapi.add_ip("192.0.2.10", "ban", "1h");
    let (gate, key_name) = start_gate(&lapi, Some(ca.cert()), None, "");
    wait_ready(&gate).await;
    wait_verdicts(&gate, &["192.0.2.10"], 403, "the start-up ban").await;
    expect_verdicts(&gate, &["192.0.2.11", "203.0.113.1"], 200, "no decision").await;

    lapi.add_ip("192.0.2.12", "ban", "1h");
    lapi.add_range("10.0.0.0/24", "ban", "1h");
    wait_verdicts(&gate, &["192.0.2.12", "10.0.0.7"], 403, "bans added later").await;
    lapi.delete_ip("192.0.2.10");
    wait_verdicts(&gate, &["192.0.2.10"], 200, "a deletion").await;

    let text = gate.metrics().await;
    assert_eq!(
        metric_sum(&text, "jacker_gate_crowdsec_sync_errors_total", &[]).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    let logs = gate.logs();
    assert!(
        logs.contains("crowdsec LAPI synced") && !logs.contains("sync failed"),
        "{logs}"
    );
    // The requests reached this LAPI over TLS as this bouncer, authenticated by its key.
    let bouncer = lapi_bouncer(&lapi, &key_name);
    assert_eq!(bouncer["auth_type"], "api-key", "{bouncer}");
    assert_eq!(bouncer["type"], BOUNCER_TYPE, "{bouncer}");
    assert_eq!(bouncer["ip_address"], "127.0.0.1", "{bouncer}");
}

/// Without a `ca_file` the gate trusts only the public roots; with another CA's it trusts only
/// that; with the right CA but a certificate for another name it must check the name. Each
/// time: a log line about the certificate, counted sync errors, `/readyz` 503 and, with
/// `fail_closed`, no 2xx for anyone, banned or not.
#[tokio::test]
async fn gate_rejects_a_lapi_certificate_it_cannot_verify() {
    let ca = TestCa::new("jacker-gate test CA");
    let other_ca = TestCa::new("some other CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca));
    lapi.add_ip("192.0.2.10", "ban", "1h");
    let misnamed = Lapi::start_with_tls(LapiTls::new(&ca).server_dns_name("lapi.example.test"));
    misnamed.add_ip("192.0.2.10", "ban", "1h");

    let cases = [
        ("no ca_file", &lapi, None, "issuer"),
        ("another CA", &lapi, Some(other_ca.cert()), "issuer"),
        ("another name", &misnamed, Some(ca.cert()), "name"),
    ];
    for (case, lapi, ca_file, reason) in cases {
        let (gate, _) = start_gate(lapi, ca_file, None, "fail_closed = true\n");
        let line = wait_sync_failure(&gate, case).await;
        assert!(
            line.to_ascii_lowercase().contains(reason),
            "{case}: the log line does not say why ({reason:?}): {line}"
        );
        assert_not_ready(&gate, case).await;
        let text = gate.metrics().await;
        assert!(
            metric_sum(&text, "jacker_gate_crowdsec_sync_errors_total", &[])
                .is_some_and(|n| n > 0.0),
            "{case}:\n{text}"
        );
        for ip in ["192.0.2.10", "192.0.2.11"] {
            let status = auth_status(&gate, ip).await;
            assert!(
                !(200..300).contains(&status),
                "{case}: {ip} got {status} from a fail-closed gate that never synced"
            );
        }
    }
    // The gates did reach the LAPIs and turned their certificates down.
    wait_lapi_log(&lapi, "TLS handshake error").await;
    wait_lapi_log(&misnamed, "TLS handshake error").await;
}

/// `RequireAndVerifyClientCert`: the gate with `cert_file` + `key_file` syncs (as the bouncer the
/// certificate names), the gate without them never gets through the handshake, and a certificate
/// whose `OU` the LAPI does not accept gets 403 although the API key is valid.
#[tokio::test]
async fn gate_presents_its_client_certificate_to_a_lapi_that_requires_one() {
    let ca = TestCa::new("jacker-gate test CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca).client_certs(ClientCerts::Required));
    lapi.add_ip("192.0.2.10", "ban", "1h");

    let setup = Gate::setup();
    let cert = ca.client_cert(setup.dir(), "client", Some(BOUNCER_OU), "jacker-gate");
    let (gate, _) = start_gate_in(setup, &lapi, Some(ca.cert()), Some(&cert), "");
    wait_ready(&gate).await;
    wait_verdicts(&gate, &["192.0.2.10"], 403, "the start-up ban").await;
    expect_verdicts(&gate, &["192.0.2.11"], 200, "no decision").await;
    lapi.add_ip("192.0.2.12", "ban", "1h");
    wait_verdicts(&gate, &["192.0.2.12"], 403, "a ban added later").await;
    let bouncer = lapi_bouncer(&lapi, "jacker-gate@127.0.0.1");
    assert_eq!(bouncer["auth_type"], "tls", "{bouncer}");
    assert_eq!(bouncer["type"], BOUNCER_TYPE, "{bouncer}");

    // Without a certificate: a transport failure, never an HTTP answer. The line usually names
    // the cause ("received fatal alert: BadCertificate") but need not (see "TLS 1.3" in the
    // module comment); the LAPI's log always does.
    let (no_cert, _) = start_gate(&lapi, Some(ca.cert()), None, "");
    let line = wait_sync_failure(&no_cert, "no client certificate").await;
    assert!(line.contains("cannot reach the LAPI"), "{line}");
    assert_not_ready(&no_cert, "no client certificate").await;
    let text = no_cert.metrics().await;
    assert!(
        metric_sum(&text, "jacker_gate_crowdsec_sync_errors_total", &[]).is_some_and(|n| n > 0.0),
        "{text}"
    );
    wait_lapi_log(&lapi, "client didn't provide a certificate").await;

    let setup = Gate::setup();
    let cert = ca.client_cert(setup.dir(), "client", Some("ops"), "jacker-gate-ops");
    let (wrong_ou, _) = start_gate_in(setup, &lapi, Some(ca.cert()), Some(&cert), "");
    let line = wait_sync_failure(&wrong_ou, "a certificate with OU=ops").await;
    assert!(line.contains("403"), "{line}");
    assert_not_ready(&wrong_ou, "a certificate with OU=ops").await;

    // The first gate is unaffected by the others' failures.
    expect_verdicts(
        &gate,
        &["192.0.2.10", "192.0.2.12"],
        403,
        "after the others",
    )
    .await;
    let (status, _, _) = gate.get("/readyz", &[]).await;
    assert_eq!(status, 200);
}

/// `VerifyClientCertIfGiven`: the same LAPI serves a gate that authenticates with its API key
/// (no certificate) and one that presents a certificate; each is the bouncer it should be.
#[tokio::test]
async fn gate_uses_its_api_key_or_its_certificate_where_certificates_are_optional() {
    let ca = TestCa::new("jacker-gate test CA");
    let lapi = Lapi::start_with_tls(LapiTls::new(&ca).client_certs(ClientCerts::VerifiedIfGiven));
    lapi.add_ip("192.0.2.10", "ban", "1h");

    let (by_key, key_name) = start_gate(&lapi, Some(ca.cert()), None, "");
    let setup = Gate::setup();
    let cert = ca.client_cert(setup.dir(), "client", Some(BOUNCER_OU), "gate-with-cert");
    let (by_cert, unused_key_name) = start_gate_in(setup, &lapi, Some(ca.cert()), Some(&cert), "");
    for gate in [&by_key, &by_cert] {
        wait_ready(gate).await;
        wait_verdicts(gate, &["192.0.2.10"], 403, "the start-up ban").await;
        expect_verdicts(gate, &["192.0.2.11"], 200, "no decision").await;
    }

    let keyed = lapi_bouncer(&lapi, &key_name);
    assert_eq!(keyed["auth_type"], "api-key", "{keyed}");
    assert_eq!(keyed["type"], BOUNCER_TYPE, "{keyed}");
    let certified = lapi_bouncer(&lapi, "gate-with-cert@127.0.0.1");
    assert_eq!(certified["auth_type"], "tls", "{certified}");
    assert_eq!(certified["type"], BOUNCER_TYPE, "{certified}");
    // The certificate won: the key the second gate also sent was never read.
    let unused = lapi_bouncer(&lapi, &unused_key_name);
    assert_eq!(unused["ip_address"], "", "{unused}");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Registers a bouncer and starts a gate against `lapi` with its key; returns the gate and the
/// bouncer's name.
fn start_gate(
    lapi: &Lapi,
    ca_file: Option<&Path>,
    client_cert: Option<&CertPair>,
    crowdsec_extra: &str,
) -> (Gate, String) {
    start_gate_in(Gate::setup(), lapi, ca_file, client_cert, crowdsec_extra)
}

fn start_gate_in(
    setup: support::gate::GateSetup,
    lapi: &Lapi,
    ca_file: Option<&Path>,
    client_cert: Option<&CertPair>,
    crowdsec_extra: &str,
) -> (Gate, String) {
    let name = format!("gate-{}", unique_hex());
    let key = lapi.bouncer_key(&name);
    let key_file = setup.write_secret("crowdsec_key", &key);
    let mut tls = String::new();
    if let Some(ca) = ca_file {
        tls.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    if let Some(pair) = client_cert {
        tls.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pair.cert.display(),
            pair.key.display()
        ));
    }
    let gate = setup.start(&format!(
        r#"
[crowdsec]
lapi_url = "{url}"
api_key_file = "{key_file}"
mode = "stream"
update_interval = "{interval}s"
{tls}{crowdsec_extra}

[rate_limit]
per_second = 0

[log]
level = "info"
"#,
        url = lapi.url(),
        key_file = key_file.display(),
        interval = UPDATE_INTERVAL.as_secs(),
    ));
    (gate, name)
}

/// Waits for the gate's "sync failed" log line; returns it.
async fn wait_sync_failure(gate: &Gate, case: &str) -> String {
    eventually(
        SYNC_DEADLINE,
        &format!("{case}: a crowdsec sync failure in the log"),
        async || {
            gate.logs()
                .lines()
                .find(|line| line.contains("crowdsec LAPI sync failed"))
                .map(str::to_owned)
                .ok_or_else(|| gate.logs())
        },
    )
    .await
}

async fn assert_not_ready(gate: &Gate, case: &str) {
    let (status, _, body) = gate.get("/readyz", &[]).await;
    assert_eq!(status, 503, "{case}: /readyz {body}\n{}", gate.logs());
}

async fn wait_ready(gate: &Gate) {
    eventually(READY_DEADLINE, "/readyz 200", async || {
        let (status, _, body) = gate.get("/readyz", &[]).await;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}\ngate logs:\n{}", gate.logs()))
        }
    })
    .await;
}

async fn wait_lapi_log(lapi: &Lapi, needle: &str) {
    eventually(
        SYNC_DEADLINE,
        &format!("{needle:?} in the LAPI log"),
        async || {
            let log = lapi.log();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}

/// The bouncer `name` as `cscli bouncers list -o json` shows it.
fn lapi_bouncer(lapi: &Lapi, name: &str) -> Value {
    let text = lapi.cscli(&["bouncers", "list", "-o", "json"]);
    let bouncers: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bouncers list: {e}: {text}"));
    bouncers
        .into_iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no bouncer {name:?} in {text}"))
}

/// An HTTPS client for the LAPI that trusts `ca` and presents `identity`.
fn lapi_client(ca: &TestCa, identity: Option<&CertPair>) -> reqwest::Client {
    https_client(ca.cert(), identity)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("build HTTPS client")
}

/// `GET path` on the LAPI, with `X-Api-Key` when given; the status and body, or the error chain.
async fn get(
    client: &reqwest::Client,
    lapi: &Lapi,
    api_key: Option<&str>,
    path: &str,
) -> Result<(u16, String), String> {
    let mut request = client.get(format!("{}{path}", lapi.url()));
    if let Some(key) = api_key {
        request = request.header("X-Api-Key", key);
    }
    let response = request.send().await.map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| error_chain(&e))?;
    Ok((status, body))
}

/// What the LAPI answers to the start of a plain HTTP request on its port. Only the first five
/// bytes are sent: Go's TLS server reads a record header, sees HTTP and answers 400 before it
/// closes; with more unread bytes the close would be a reset that can swallow the answer.
fn plain_http_probe(lapi: &Lapi) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(lapi.addr()).expect("connect to the LAPI");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    stream.write_all(b"GET /").expect("send to the LAPI");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// 32 hex digits unlikely to repeat between tests running in parallel (bouncer names).
fn unique_hex() -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let random = || std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("{:016x}{:016x}", random(), random())
}
