//! The real `jacker-gate` binary, run as `jacker-gate run --config FILE` from a temporary directory
//! on a free 127.0.0.1 port, with its log output captured for the test to search. The test gives
//! the TOML; only `server.listen` is filled in here. The process is killed by its PID on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tempfile::TempDir;

use super::{blocking_get, free_port, kill_and_reap, send_signal};

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

    /// Listens on `port` (from `free_port()`) instead of a port picked at start: for a gate whose
    /// own URL must be known before it starts (its `server.public_url`, a peer's config).
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

    /// Writes `toml` (with `server.listen` set to a free port) and starts the gate, waiting until
    /// `/healthz` answers 200. Panics, with the gate's logs, if it exits or never gets healthy.
    pub(crate) fn start(self, toml: &str) -> Gate {
        let mut gate = self.launch(toml);
        gate.wait_healthy();
        gate
    }

    /// Like `start` but does not wait for `/healthz`: for a gate that is expected to fail.
    pub(crate) fn launch(self, toml: &str) -> Gate {
        let port = self.port.unwrap_or_else(free_port);
        let config_path = self.dir.path().join("gate.toml");
        write_config(&config_path, toml, port);
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
        let log_file = self.log_file.map(|path| {
            Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open the gate's log file"),
            ))
        });
        let mut gate = Gate {
            dir: self.dir,
            env: self.env,
            port,
            config_path,
            child: None,
            logs: Arc::new(Mutex::new(String::new())),
            log_file,
            client,
            tls,
        };
        gate.spawn();
        gate
    }
}

pub(crate) struct Gate {
    dir: TempDir,
    env: BTreeMap<String, String>,
    port: u16,
    config_path: PathBuf,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    log_file: Option<Arc<Mutex<std::fs::File>>>,
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

    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes (or rewrites) a secret file next to the config; see `GateSetup::write_secret`.
    pub(crate) fn write_secret(&self, name: &str, contents: &str) -> PathBuf {
        write_secret_in(self.dir.path(), name, contents)
    }

    /// Everything the gate wrote to stdout and stderr so far, across restarts, one line per line.
    pub(crate) fn logs(&self) -> String {
        self.logs.lock().expect("log buffer").clone()
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
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Asks the gate to shut down (SIGTERM, by PID) and waits up to `timeout` for it to exit;
    /// returns its exit status, or kills it and panics when it does not exit in time.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid().expect("gate is running");
        send_signal(pid, "TERM");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => {
                self.stop();
                panic!(
                    "gate did not exit within {timeout:?} of SIGTERM\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Waits up to `timeout` for the gate to exit on its own; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for gate") {
                self.child = None;
                // Give the log readers a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gate again with the same config file (secret files may have been rewritten in
    /// between) and waits for `/healthz`. It listens on a new free port: the old one may still
    /// hold connections in TIME_WAIT, which is no concern of the test.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        self.port = free_port();
        let toml = std::fs::read_to_string(&self.config_path).expect("read gate config");
        write_config(&self.config_path, &toml, self.port);
        self.spawn();
        self.wait_healthy();
    }

    pub(crate) fn pause(&self) {
        send_signal(self.pid().expect("gate is running"), "STOP");
    }

    pub(crate) fn resume(&self) {
        send_signal(self.pid().expect("gate is running"), "CONT");
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jacker-gate"));
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("JACKER_GATE_") {
                command.env_remove(key);
            }
        }
        command.envs(&self.env);
        let mut child = command.spawn().expect("spawn jacker-gate");
        capture(
            child.stdout.take().expect("piped stdout"),
            &self.logs,
            self.log_file.clone(),
        );
        capture(
            child.stderr.take().expect("piped stderr"),
            &self.logs,
            self.log_file.clone(),
        );
        self.child = Some(child);
    }

    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            let healthy = if self.tls {
                let client = reqwest::Client::builder()
                    .danger_accept_invalid_certs(true)
                    .no_proxy()
                    .timeout(Duration::from_secs(1))
                    .build()
                    .expect("build HTTPS client");
                let url = format!("{}/healthz", self.url());
                matches!(
                    super::crowdsec::pki::blocking_https_get(&client, &url),
                    Ok((200, _))
                )
            } else {
                matches!(
                    blocking_get(self.addr(), "/healthz", Duration::from_secs(1)),
                    Ok((200, _))
                )
            };
            if healthy {
                return;
            }
            if let Some(status) = self.wait_exit(Duration::ZERO) {
                panic!(
                    "jacker-gate exited during start-up ({status})\nconfig:\n{}\nlogs:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.logs()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "jacker-gate not healthy on {} after {START_TIMEOUT:?}\nlogs:\n{}",
                    self.url(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the test's TOML to `path` with `server.listen` set to `127.0.0.1:port`.
fn write_config(path: &Path, toml: &str, port: u16) {
    let mut table: toml::Table = toml::from_str(toml)
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

/// Appends every line the gate writes on `pipe` to `logs`, on a thread that ends with the pipe.
fn capture(
    pipe: impl Read + Send + 'static,
    logs: &Arc<Mutex<String>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
) {
    let logs = Arc::clone(logs);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line);
            let mut logs = logs.lock().expect("log buffer");
            logs.push_str(text.trim_end_matches('\n'));
            logs.push('\n');
            if let Some(file) = &file {
                let _ = file.lock().expect("log file").write_all(&line);
            }
            line.clear();
        }
    });
}
