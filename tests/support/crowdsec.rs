//! An isolated CrowdSec Local API (Debian `crowdsec` 1.4.6) for one test: its own `config.yaml`,
//! sqlite database and credentials in a temporary directory, on a free 127.0.0.1 port, with no
//! online API, no agent and no Prometheus. Every `cscli` call passes `-c DIR/config.yaml`, so the
//! system's CrowdSec configuration is never read or changed.

use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{blocking_get, free_port, kill_and_reap, require_binary, send_signal};

/// How long the LAPI may take to answer `/health` (it takes about 0.2 s here).
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct Lapi {
    dir: TempDir,
    port: u16,
    crowdsec: PathBuf,
    cscli: PathBuf,
    child: Option<Child>,
}

impl Lapi {
    /// Starts a LAPI, waits until `/health` says it is up, and registers a machine so that
    /// `cscli decisions ...` can talk to it.
    pub(crate) fn start() -> Lapi {
        let crowdsec = require_binary("crowdsec");
        let cscli = require_binary("cscli");
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-lapi-")
            .tempdir()
            .expect("create LAPI temp dir");
        let port = free_port();
        write_config(dir.path(), port);
        let mut lapi = Lapi {
            dir,
            port,
            crowdsec,
            cscli,
            child: None,
        };
        lapi.spawn();
        let credentials = lapi.path("local_api_credentials.yaml");
        lapi.cscli(&[
            "machines",
            "add",
            "--auto",
            "-f",
            credentials.to_str().expect("utf-8 temp path"),
            "--url",
            &lapi.url(),
        ]);
        lapi
    }

    /// The base URL a bouncer uses, e.g. `http://127.0.0.1:41234`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
        self.child.as_ref().map(Child::id)
    }

    /// What the LAPI logged so far (all of its runs), for failure messages.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.path("crowdsec.log")).unwrap_or_default()
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
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts the LAPI again on the same port with the same directory and database, so earlier
    /// decisions, machines and bouncer keys are still there.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the LAPI (SIGSTOP): connections are accepted by the kernel but never answered.
    pub(crate) fn pause(&self) {
        send_signal(self.pid().expect("LAPI is running"), "STOP");
    }

    /// Thaws a paused LAPI (SIGCONT).
    pub(crate) fn resume(&self) {
        send_signal(self.pid().expect("LAPI is running"), "CONT");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("crowdsec.log"))
            .expect("open LAPI log");
        let child = Command::new(&self.crowdsec)
            .arg("-c")
            .arg(self.path("config.yaml"))
            .args(["-no-cs", "-no-capi"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .expect("spawn crowdsec");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = blocking_get(self.addr(), "/health", Duration::from_secs(1)) {
                if body.contains("\"up\"") {
                    return;
                }
            }
            let child = self.child.as_mut().expect("LAPI spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "crowdsec exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "crowdsec LAPI not up on {} after {START_TIMEOUT:?}:\n{}",
                    self.url(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A LAPI-only configuration: everything under `dir`, no `online_client`, no Prometheus, logs on
/// stdout (captured into `crowdsec.log`).
fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
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
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/profiles.yaml
    console_path: {d}/console.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"
    );
    fs::write(dir.join("config.yaml"), config).expect("write LAPI config");
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
    File::create(dir.join("crowdsec.log")).expect("create LAPI log");
}
