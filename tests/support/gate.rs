//! The real `jacker-gate` binary, run as `jacker-gate run --config FILE` from a temporary directory
//! on 127.0.0.1, with its log output captured for the test to search. The test gives the TOML;
//! only `server.listen` is filled in here. The process is killed by its PID on drop.
//!
//! The gate binds `127.0.0.1:0` and its port is read from its "jacker-gate serving" log line, so
//! no other process can take it first. Only a gate whose URL other peers must know before it
//! starts (its `public_url` in a provider's redirect URIs) is given a port (`GateSetup::port`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tempfile::TempDir;

use super::blocking_get;
use super::peer::Peer;

/// A debug build starts in well under a second; this only bounds a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory a gate will run from, before it starts: write secret files here, then `start`.
pub(crate) struct GateSetup {
    dir: TempDir,
    env: BTreeMap<String, String>,
    port: Option<u16>,
    log_file: Option<PathBuf>,
}

impl GateSetup {
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a secret file (mode 0600) next to the config and returns its absolute path, for a
    /// `*_file` key.
    pub(crate) fn write_secret(&self, name: &str, contents: &str) -> PathBuf {
        write_secret_in(self.dir.path(), name, contents)
    }

    /// Sets an environment variable for the gate process (e.g. `JACKER_GATE_LOG__LEVEL`). The
    /// test's own `JACKER_GATE_*` and `RUST_LOG` variables are never passed on.
    pub(crate) fn env(mut self, key: &str, value: &str) -> GateSetup {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Listens on `port` (from `reserve_port()`) instead of a port it picks itself: for a gate
    /// whose own URL must be known before it starts (its `server.public_url`, a peer's config).
    pub(crate) fn port(mut self, port: u16) -> GateSetup {
        self.port = Some(port);
        self
    }

    /// Also appends every line the gate logs to `path` (as a log shipper would, for a CrowdSec
    /// agent to tail).
    pub(crate) fn log_to(mut self, path: &Path) -> GateSetup {
        self.log_file = Some(path.to_owned());
        self
    }

    /// Writes `toml` (with `server.listen` set) and starts the gate, waiting until `/healthz`
    /// answers 200 on the port it serves on. Panics, with the gate's logs, if it exits or never
    /// gets healthy.
    pub(crate) fn start(self, toml: &str) -> Gate {
        let config_path = self.dir.path().join("gate.toml");
        std::fs::write(&config_path, toml).expect("write gate config");
        // A gate with `server.tls_cert_file` listens with TLS: its URL is https, and this
        // client (for `get` and the health polls) does not check the test certificate.
        let tls = toml.contains("tls_cert_file");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .danger_accept_invalid_certs(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build HTTP client");
        let mut peer = Peer::new("jacker-gate");
        if let Some(path) = &self.log_file {
            peer = peer.tee(path);
        }
        let mut gate = Gate {
            peer,
            dir: self.dir,
            env: self.env,
            fixed_port: self.port,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config_path,
            client,
            tls,
        };
        gate.spawn();
        gate
    }
}

pub(crate) struct Gate {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    env: BTreeMap<String, String>,
    /// The port given by `GateSetup::port`; `None`: the gate picks one (`127.0.0.1:0`).
    fixed_port: Option<u16>,
    /// Where it serves, from its log.
    addr: SocketAddr,
    config_path: PathBuf,
    client: reqwest::Client,
    /// The gate listens with TLS.
    tls: bool,
}

impl Gate {
    /// A fresh directory for a gate; see `GateSetup`.
    pub(crate) fn setup() -> GateSetup {
        GateSetup {
            dir: tempfile::Builder::new()
                .prefix("jacker-gate-")
                .tempdir()
                .expect("create gate temp dir"),
            env: BTreeMap::new(),
            port: None,
            log_file: None,
        }
    }

    /// Starts a gate that needs no secret files.
    pub(crate) fn start(toml: &str) -> Gate {
        Gate::setup().start(toml)
    }

    /// `http://127.0.0.1:PORT` (`https://` for a TLS listener).
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// Writes (or rewrites) a secret file next to the config; see `GateSetup::write_secret`.
    pub(crate) fn write_secret(&self, name: &str, contents: &str) -> PathBuf {
        write_secret_in(self.dir.path(), name, contents)
    }

    /// Everything the gate wrote to stdout and stderr so far, across restarts, one line per line.
    pub(crate) fn logs(&self) -> String {
        self.peer.logs()
    }

    /// `GET path` with extra headers; redirects are never followed. Returns status, headers, body.
    pub(crate) async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        self.request(reqwest::Method::GET, path, headers).await
    }

    /// Any method; see `get`.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let url = format!("{}{path}", self.url());
        let response = self
            .client
            .request(method, &url)
            .headers(map)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("request to {url} failed: {e}\ngate logs:\n{}", self.logs())
            });
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        (status, headers, body)
    }

    /// The `/metrics` text; panics unless it answers 200.
    pub(crate) async fn metrics(&self) -> String {
        let (status, _, body) = self.get("/metrics", &[]).await;
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        body
    }

    /// Sends `bytes` as they are over a new TCP connection and returns whatever comes back until
    /// the gate closes the connection or stays quiet (5 s for the first byte, then 300 ms).
    pub(crate) fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(self.addr()).expect("connect to the gate");
        stream.write_all(bytes).expect("send raw request");
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let timeout = if received.is_empty() {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(300)
            };
            stream.set_read_timeout(Some(timeout)).expect("set timeout");
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                // A reset after the answer is how some servers end a bad request.
                Err(_) => break,
            }
        }
        received
    }

    /// Waits up to `timeout` for a log line containing `needle`; returns that line.
    pub(crate) async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        super::eventually(
            timeout,
            &format!("a log line containing {needle:?}"),
            async || {
                self.logs()
                    .lines()
                    .find(|line| line.contains(needle))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("logs:\n{}", self.logs()))
            },
        )
        .await
    }

    /// Kills the gate (SIGKILL, by PID) and waits for it.
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    /// Asks the gate to shut down (SIGTERM, by PID) and waits up to `timeout` for it to exit;
    /// returns its exit status, or kills it and panics when it does not exit in time.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.peer.terminate(timeout)
    }

    /// Waits up to `timeout` for the gate to exit on its own; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.peer.wait_exit(timeout)
    }

    /// Starts the gate again with the same config file (secret files may have been rewritten in
    /// between) and waits for `/healthz`. Unless its port was given, it serves on a new one: the
    /// old one may still hold connections in TIME_WAIT, which is no concern of the test.
    pub(crate) fn start_again(&mut self) {
        self.spawn();
    }

    pub(crate) fn pause(&self) {
        self.peer.pause();
    }

    pub(crate) fn resume(&self) {
        self.peer.resume();
    }

    /// Starts the gate with its config's `server.listen` set, waits until it logs where it
    /// serves and `/healthz` answers there, then writes that address into the config file (as
    /// `healthcheck --config` reads it).
    fn spawn(&mut self) {
        let port = self.fixed_port.unwrap_or(0);
        set_listen(&self.config_path, port);
        let mut command = Command::new(env!("CARGO_BIN_EXE_jacker-gate"));
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("JACKER_GATE_") {
                command.env_remove(key);
            }
        }
        command.envs(&self.env);
        self.peer.spawn(command);
        let tls = self.tls;
        self.addr = self.peer.ready(START_TIMEOUT, |peer| {
            let addr = serving_addr(&peer.run_logs()).ok_or("no \"serving\" log line yet")?;
            if port != 0 && addr.port() != port {
                return Err(format!("serves on {addr}, not on port {port}"));
            }
            if healthy(addr, tls) {
                Ok(addr)
            } else {
                Err(format!("/healthz on {addr} is not 200 yet"))
            }
        });
        set_listen(&self.config_path, self.addr.port());
    }
}

/// The address in the gate's "jacker-gate serving" log line (text or JSON), if it logged one.
pub(crate) fn serving_addr(logs: &str) -> Option<SocketAddr> {
    let line = logs.lines().find(|l| l.contains("jacker-gate serving"))?;
    let (_, rest) = line
        .split_once("listen=")
        .or_else(|| line.split_once("\"listen\":\""))?;
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
}

/// `GET /healthz` answers 200 (over TLS, without checking the certificate, when `tls`).
fn healthy(addr: SocketAddr, tls: bool) -> bool {
    if !tls {
        return matches!(
            blocking_get(addr, "/healthz", Duration::from_secs(1)),
            Ok((200, _))
        );
    }
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("build HTTPS client");
    matches!(
        super::crowdsec::pki::blocking_https_get(&client, &format!("https://{addr}/healthz")),
        Ok((200, _))
    )
}

/// Sets `server.listen` of the config at `path` to `127.0.0.1:port`.
fn set_listen(path: &Path, port: u16) {
    let toml = std::fs::read_to_string(path).expect("read gate config");
    let mut table: toml::Table = toml::from_str(&toml)
        .unwrap_or_else(|e| panic!("the test's gate config is not TOML: {e}\n{toml}"));
    let server = table
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[server] is a table");
    server.insert(
        "listen".to_owned(),
        toml::Value::String(format!("127.0.0.1:{port}")),
    );
    std::fs::write(path, table.to_string()).expect("write gate config");
}

fn write_secret_in(dir: &Path, name: &str, contents: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("write secret file");
    file.write_all(contents.as_bytes())
        .expect("write secret file");
    path
}
