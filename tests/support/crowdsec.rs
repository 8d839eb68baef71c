//! An isolated CrowdSec Local API (Debian `crowdsec` 1.4.6) for one test: its own `config.yaml`,
//! sqlite database and credentials in a temporary directory, on a free 127.0.0.1 port, with no
//! online API, no agent and no Prometheus. Every `cscli` call passes `-c DIR/config.yaml`, so the
//! system's CrowdSec configuration is never read or changed.
//!
//! `Lapi::start_with_tls` serves the same API over HTTPS only (`api.server.tls`), with a server
//! certificate from a test CA and, optionally, client certificate verification; see `LapiTls`.

pub(crate) mod pki;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use self::pki::{blocking_https_get, https_client, CertPair, TestCa};
use super::peer::{retry_on_taken_port, Peer, PortTaken};
use super::{blocking_get, require_binary, reserve_port};

/// How long the LAPI may take to answer `/health` (it takes about 0.2 s here).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// CrowdSec takes its port from its config and does not say which one it got for `:0`, so the
/// port is picked before start and a taken one replaced (see `peer`); `start_again` keeps it.
pub(crate) struct Lapi {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    port: u16,
    crowdsec: PathBuf,
    cscli: PathBuf,
    /// `None`: plain HTTP.
    tls: Option<TlsFiles>,
}

/// How a TLS LAPI treats client certificates (`api.server.tls.client_verification`).
///
/// What CrowdSec 1.4.6 does with one (checked against the real thing, pinned in
/// `tests/gate/crowdsec_tls.rs`): a request that comes with a verified client certificate is
/// authenticated by that certificate alone and `X-Api-Key` is not even read; the certificate's
/// `OU` must be in `bouncers_allowed_ou` (set to `bouncer-ou` here) or the answer is 403, and the
/// bouncer appears in `cscli bouncers list` as `<CN>@<ip>` with auth type `tls`. Requests
/// without a certificate use the API key as usual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientCerts {
    /// No `client_verification` key, as an operator who only wants HTTPS writes it. 1.4.6 then
    /// asks for no certificate but verifies one that is sent against the system roots, so a
    /// certificate from the test CA fails the handshake.
    Default,
    /// `VerifyClientCertIfGiven` with `ca_cert_path` set to the test CA: API key or certificate.
    VerifiedIfGiven,
    /// `RequireAndVerifyClientCert` with `ca_cert_path` set to the test CA: no handshake without
    /// a certificate from that CA.
    Required,
}

/// Options for `Lapi::start_with_tls`.
pub(crate) struct LapiTls<'a> {
    ca: &'a TestCa,
    client_certs: ClientCerts,
    dns_name: Option<String>,
}

impl<'a> LapiTls<'a> {
    /// A server certificate for `IP:127.0.0.1` signed by `ca`; client certificates as
    /// `ClientCerts::Default`.
    pub(crate) fn new(ca: &'a TestCa) -> LapiTls<'a> {
        LapiTls {
            ca,
            client_certs: ClientCerts::Default,
            dns_name: None,
        }
    }

    pub(crate) fn client_certs(mut self, mode: ClientCerts) -> LapiTls<'a> {
        self.client_certs = mode;
        self
    }

    /// Makes the server certificate name only `DNS:name` (no IP address), so that a client that
    /// dials `https://127.0.0.1:PORT` must reject it. The harness itself reaches the LAPI under
    /// that name (resolved to 127.0.0.1 inside its own client), and `cscli` skips verification
    /// (`api.client.insecure_skip_verify`), so `cscli decisions ...` still works.
    pub(crate) fn server_dns_name(mut self, name: &str) -> LapiTls<'a> {
        self.dns_name = Some(name.to_owned());
        self
    }
}

/// The TLS material of a running LAPI, all under its directory (the CA certificate is copied, so
/// the LAPI can restart after the `TestCa` is gone).
struct TlsFiles {
    ca: PathBuf,
    /// The certificate `cscli` (and the health poll, when certificates are required) presents:
    /// `OU=agent-ou`, `CN=cscli`.
    agent: CertPair,
    client_certs: ClientCerts,
    dns_name: Option<String>,
}

impl Lapi {
    /// Starts a LAPI, waits until `/health` says it is up, and registers a machine so that
    /// `cscli decisions ...` can talk to it.
    pub(crate) fn start() -> Lapi {
        Lapi::launch(None)
    }

    /// Like `start`, but the LAPI speaks HTTPS only, with a server certificate from `tls.ca`
    /// (made here, in the LAPI's directory) and the client certificate policy of `tls`. `cscli`
    /// trusts the CA (`ca_cert_path` in its credentials) and, when certificates are required,
    /// logs in with one of its own (`OU=agent-ou`) instead of a password.
    pub(crate) fn start_with_tls(tls: LapiTls<'_>) -> Lapi {
        Lapi::launch(Some(tls))
    }

    fn launch(tls: Option<LapiTls<'_>>) -> Lapi {
        let crowdsec = require_binary("crowdsec");
        let cscli = require_binary("cscli");
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-lapi-")
            .tempdir()
            .expect("create LAPI temp dir");
        let tls = tls.map(|tls| make_tls_files(dir.path(), &tls));
        write_files(dir.path());
        let mut lapi = Lapi {
            peer: Peer::new("crowdsec LAPI"),
            dir,
            port: 0,
            crowdsec,
            cscli,
            tls,
        };
        retry_on_taken_port("crowdsec LAPI", || {
            lapi.port = reserve_port();
            write_config(lapi.dir.path(), lapi.port, lapi.tls.as_ref());
            lapi.spawn()
        });
        let credentials = lapi.path("local_api_credentials.yaml");
        match &lapi.tls {
            None => {
                lapi.cscli(&[
                    "machines",
                    "add",
                    "--auto",
                    "-f",
                    credentials.to_str().expect("utf-8 temp path"),
                    "--url",
                    &lapi.url(),
                ]);
            }
            // 1.4.6 refuses a password and a certificate together ("mutually exclusive"); with a
            // certificate the LAPI creates and validates the machine `cscli@127.0.0.1` itself.
            Some(tls) if tls.client_certs == ClientCerts::Required => {
                fs::write(
                    &credentials,
                    format!(
                        "url: {}\nca_cert_path: {}\ncert_path: {}\nkey_path: {}\n",
                        lapi.url(),
                        tls.ca.display(),
                        tls.agent.cert.display(),
                        tls.agent.key.display()
                    ),
                )
                .expect("write cscli credentials");
            }
            Some(tls) => {
                let ca = tls.ca.clone();
                lapi.cscli(&[
                    "machines",
                    "add",
                    "--auto",
                    "-f",
                    credentials.to_str().expect("utf-8 temp path"),
                    "--url",
                    &lapi.url(),
                ]);
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(&credentials)
                    .expect("open cscli credentials");
                writeln!(file, "ca_cert_path: {}", ca.display()).expect("write cscli credentials");
            }
        }
        lapi
    }

    /// The base URL a bouncer uses, e.g. `http://127.0.0.1:41234` (`https://` with TLS).
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PID of the running LAPI, `None` after `stop`.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// What the LAPI logged so far (all of its runs), for failure messages.
    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// Registers a bouncer and returns its API key (`cscli bouncers add NAME -o raw`).
    pub(crate) fn bouncer_key(&self, name: &str) -> String {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        let key = key.trim().to_owned();
        assert!(
            !key.is_empty() && !key.contains(char::is_whitespace),
            "cscli printed no usable bouncer key: {key:?}"
        );
        key
    }

    /// Adds a decision on one address, e.g. `add_ip("1.2.3.4", "ban", "1h")`.
    pub(crate) fn add_ip(&self, ip: &str, kind: &str, duration: &str) {
        self.cscli(&[
            "decisions",
            "add",
            "--ip",
            ip,
            "--type",
            kind,
            "--duration",
            duration,
        ]);
    }

    /// Adds a decision on a range, e.g. `add_range("10.0.0.0/24", "ban", "1h")`.
    pub(crate) fn add_range(&self, cidr: &str, kind: &str, duration: &str) {
        self.cscli(&[
            "decisions",
            "add",
            "--range",
            cidr,
            "--type",
            kind,
            "--duration",
            duration,
        ]);
    }

    /// Deletes every decision on exactly this address.
    pub(crate) fn delete_ip(&self, ip: &str) {
        self.cscli(&["decisions", "delete", "--ip", ip]);
    }

    /// Deletes every decision on exactly this range.
    pub(crate) fn delete_range(&self, cidr: &str) {
        self.cscli(&["decisions", "delete", "--range", cidr]);
    }

    /// Bulk-loads decisions from a CSV (with a header line) or JSON file, as
    /// `cscli decisions import -i FILE` documents. 100k lines take about 9 s.
    pub(crate) fn import(&self, file: &Path) {
        self.cscli(&[
            "decisions",
            "import",
            "-i",
            file.to_str().expect("utf-8 import path"),
        ]);
    }

    /// Runs `cscli -c DIR/config.yaml ARGS...`, panics unless it succeeds, returns its stdout.
    pub(crate) fn cscli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.cscli)
            .arg("-c")
            .arg(self.path("config.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cscli");
        assert!(
            output.status.success(),
            "cscli {args:?} failed ({}):\nstdout: {}\nstderr: {}\nLAPI log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8(output.stdout).expect("cscli prints utf-8")
    }

    /// Kills the LAPI (by PID) and waits for it: the port refuses connections afterwards.
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    /// Starts the LAPI again on the same port with the same directory and database, so earlier
    /// decisions, machines and bouncer keys are still there.
    pub(crate) fn start_again(&mut self) {
        let port = self.port;
        self.spawn().unwrap_or_else(|PortTaken| {
            panic!(
                "the LAPI's port {port} was taken while it was down:\n{}",
                self.log()
            )
        });
    }

    /// Freezes the LAPI (SIGSTOP): connections are accepted by the kernel but never answered.
    pub(crate) fn pause(&self) {
        self.peer.pause();
    }

    /// Thaws a paused LAPI (SIGCONT).
    pub(crate) fn resume(&self) {
        self.peer.resume();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts crowdsec and waits until `/health` says it is up.
    fn spawn(&mut self) -> Result<(), PortTaken> {
        let mut command = Command::new(&self.crowdsec);
        command
            .arg("-c")
            .arg(self.path("config.yaml"))
            .args(["-no-cs", "-no-capi"])
            .current_dir(self.dir.path());
        self.peer.spawn(command);
        let health = HealthProbe {
            addr: self.addr(),
            port: self.port,
            tls: self.tls.as_ref(),
        };
        self.peer
            .wait_ready(START_TIMEOUT, |_| match health.poll() {
                Ok((200, body)) if body.contains("\"up\"") => Ok(()),
                seen => Err(format!("/health: {seen:?}")),
            })
    }
}

/// What the health poll needs of a LAPI (borrowed apart from its `Peer`).
struct HealthProbe<'a> {
    addr: SocketAddr,
    port: u16,
    tls: Option<&'a TlsFiles>,
}

impl HealthProbe<'_> {
    /// `GET /health`: plain HTTP/1.0, or over TLS as the harness's own client (see `TlsFiles`).
    fn poll(&self) -> Result<(u16, String), String> {
        let Some(tls) = self.tls else {
            return blocking_get(self.addr, "/health", Duration::from_secs(1))
                .map_err(|e| e.to_string());
        };
        let identity = (tls.client_certs == ClientCerts::Required).then_some(&tls.agent);
        let mut builder = https_client(&tls.ca, identity).timeout(Duration::from_secs(1));
        let host = match &tls.dns_name {
            Some(name) => {
                builder = builder.resolve(name, self.addr);
                name.clone()
            }
            None => "127.0.0.1".to_owned(),
        };
        let client = builder.build().map_err(|e| e.to_string())?;
        blocking_https_get(&client, &format!("https://{host}:{}/health", self.port))
    }
}

/// Makes `DIR/tls/`: a copy of the CA certificate, the LAPI's server certificate and `cscli`'s
/// client certificate.
fn make_tls_files(dir: &Path, tls: &LapiTls<'_>) -> TlsFiles {
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).expect("create LAPI tls dir");
    let ca = tls_dir.join("ca.pem");
    fs::copy(tls.ca.cert(), &ca).expect("copy CA certificate");
    let san = match &tls.dns_name {
        Some(name) => format!("DNS:{name}"),
        None => "IP:127.0.0.1".to_owned(),
    };
    tls.ca.server_cert(&tls_dir, "lapi", &san);
    let agent = tls
        .ca
        .client_cert(&tls_dir, "cscli", Some("agent-ou"), "cscli");
    TlsFiles {
        ca,
        agent,
        client_certs: tls.client_certs,
        dns_name: tls.dns_name.clone(),
    }
}

/// The `api.server.tls` section for `tls` (indented for `api.server`), and the extra
/// `api.client` lines.
fn tls_config(dir: &Path, tls: &TlsFiles) -> (String, String) {
    let t = dir.join("tls");
    let mut server = format!(
        "    tls:\n      cert_file: {}\n      key_file: {}\n",
        t.join("lapi.pem").display(),
        t.join("lapi.key").display()
    );
    let verification = match tls.client_certs {
        ClientCerts::Default => None,
        ClientCerts::VerifiedIfGiven => Some("VerifyClientCertIfGiven"),
        ClientCerts::Required => Some("RequireAndVerifyClientCert"),
    };
    if let Some(verification) = verification {
        server.push_str(&format!(
            "      client_verification: {verification}\n      ca_cert_path: {}\n      \
             bouncers_allowed_ou:\n        - bouncer-ou\n      agents_allowed_ou:\n        - agent-ou\n",
            tls.ca.display()
        ));
    }
    let client = if tls.dns_name.is_some() {
        // cscli dials 127.0.0.1, which the certificate does not name.
        "    insecure_skip_verify: true\n".to_owned()
    } else {
        String::new()
    };
    (server, client)
}

/// A LAPI-only configuration: everything under `dir`, no `online_client`, no Prometheus, logs on
/// stdout (captured by its `Peer`); with `tls`, HTTPS only.
fn write_config(dir: &Path, port: u16, tls: Option<&TlsFiles>) {
    let d = dir.display();
    let (tls_server, tls_client) = tls.map(|tls| tls_config(dir, tls)).unwrap_or_default();
    let config = format!(
        "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {d}/local_api_credentials.yaml
{tls_client}  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/profiles.yaml
    console_path: {d}/console.yaml
    trusted_ips:
      - 127.0.0.1
{tls_server}prometheus:
  enabled: false
"
    );
    fs::write(dir.join("config.yaml"), config).expect("write LAPI config");
}

/// The files the configuration names, apart from the configuration itself.
fn write_files(dir: &Path) {
    for sub in ["data", "hub", "notifications"] {
        fs::create_dir_all(dir.join(sub)).expect("create LAPI dirs");
    }
    fs::write(dir.join("simulation.yaml"), "simulation: off\n").expect("write simulation.yaml");
    fs::write(
        dir.join("profiles.yaml"),
        "name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == \"Ip\"
decisions:
 - type: ban
   duration: 4h
on_success: break
",
    )
    .expect("write profiles.yaml");
}
