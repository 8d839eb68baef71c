//! The whole CrowdSec agent, not only its Local API: Debian's `crowdsec` 1.4.6 run as one
//! process (`crowdsec -c CFG -no-capi`: log acquisition, parsers, scenarios and the LAPI) from a
//! temporary directory, on a free 127.0.0.1 port, stopped by its PID when dropped.
//!
//! Offline on purpose: the package ships a hub snapshot in `/usr/share/crowdsec/hub`, but
//! `cscli ... install` always downloads in 1.4.6. Hub items are therefore enabled the way cscli
//! enables them, by symlinking them into the config directory (collections resolved
//! recursively from the hub's `.index.json`), and the data files scenarios need are copied from
//! `/usr/share/crowdsec/data`. Pitfalls handled here: the grok patterns must be in the config
//! directory; `http-path-traversal-probing` looks for `http_path_traversal.txt`; the Traefik
//! parser only matches once `crowdsecurity/syslog-logs` (its `non-syslog` node) has set the
//! program from the acquisition label; crowdsec tails files from their end and is ready when its
//! log says "Starting processing data", not when `/health` answers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::peer::{retry_on_taken_port, Peer};
use super::{blocking_get, require_binary, reserve_port};

const HUB: &str = "/usr/share/crowdsec/hub";
const DATA: &str = "/usr/share/crowdsec/data";
const PATTERNS: &str = "/etc/crowdsec/patterns";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent reads and which hub items it runs.
#[derive(Default)]
pub(crate) struct AgentSetup {
    /// `acquis.d` files: (file name, YAML).
    acquisition: Vec<(String, String)>,
    /// Hub items, e.g. `collections:crowdsecurity/traefik`.
    items: Vec<String>,
    /// Files of the agent's own (e.g. `parsers/s01-parse/x.yaml`), relative to the config dir.
    local: Vec<(String, String)>,
}

impl AgentSetup {
    pub(crate) fn acquisition(mut self, name: &str, yaml: &str) -> AgentSetup {
        self.acquisition.push((name.to_owned(), yaml.to_owned()));
        self
    }

    pub(crate) fn item(mut self, item: &str) -> AgentSetup {
        self.items.push(item.to_owned());
        self
    }

    /// A parser, scenario or other file of the agent's own, at `path` under the config dir.
    pub(crate) fn local_file(mut self, path: &str, yaml: &str) -> AgentSetup {
        self.local.push((path.to_owned(), yaml.to_owned()));
        self
    }

    pub(crate) fn start(self) -> Agent {
        let crowdsec = require_binary("crowdsec");
        let cscli = require_binary("cscli");
        assert!(
            Path::new(HUB).join(".index.json").is_file(),
            "no CrowdSec hub snapshot at {HUB}; run `bash scripts/install-test-deps.sh`"
        );
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-agent-")
            .tempdir()
            .expect("create agent temp dir");
        let d = dir.path();
        for sub in ["etc/acquis.d", "data", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("agent dirs");
        }
        copy_dir(Path::new(PATTERNS), &d.join("etc/patterns"));
        copy_dir(Path::new(DATA), &d.join("data"));
        // Data files under the names the hub items ask for: the Debian package ships
        // `path_traversal.txt` and `rnds_seo_bots.regex` under other names, and no IPv6 list of
        // Cloudflare's (the CDN whitelist then holds its IPv4 list only).
        for (have, want) in [
            ("path_traversal.txt", "http_path_traversal.txt"),
            ("rnds_seo_bots.regex", "rdns_seo_bots.regex"),
        ] {
            std::fs::copy(Path::new(DATA).join(have), d.join("data").join(want))
                .unwrap_or_else(|e| panic!("copy {have}: {e}"));
        }
        std::fs::write(d.join("data/cloudflare_ip6s.txt"), "").expect("cloudflare_ip6s.txt");
        std::fs::write(
            d.join("etc/profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n\
             decisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles");
        std::fs::write(d.join("etc/simulation.yaml"), "simulation: off\n").expect("simulation");
        std::fs::write(d.join("etc/local_api_credentials.yaml"), "").expect("credentials");
        for (name, yaml) in &self.acquisition {
            std::fs::write(d.join("etc/acquis.d").join(name), yaml).expect("acquisition");
        }
        for (path, yaml) in &self.local {
            let target = d.join("etc").join(path);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("local dir");
            std::fs::write(target, yaml).expect("local file");
        }
        enable_items(&d.join("etc"), &self.items);

        let config_path = d.join("etc/config.yaml");
        let mut agent = Agent {
            peer: Peer::new("crowdsec agent").log_file(&d.join("log/crowdsec.log")),
            dir,
            port: 0,
            cscli,
            config: config_path,
        };
        // CrowdSec does not say which port it got for `:0`: the port is picked here, and a taken
        // one replaced (see `peer`).
        retry_on_taken_port("crowdsec agent", || {
            agent.port = reserve_port();
            std::fs::write(&agent.config, agent_config(agent.dir.path(), agent.port))
                .expect("config.yaml");
            agent.cscli(&[
                "machines",
                "add",
                "test-agent",
                "--auto",
                "--force",
                "-f",
                &agent.path("etc/local_api_credentials.yaml"),
                "--url",
                &agent.url(),
            ]);
            let mut command = Command::new(&crowdsec);
            command.arg("-c").arg(&agent.config).arg("-no-capi");
            agent.peer.spawn(command);
            let addr = agent.addr();
            // Ready when it tails its files (it reads them from their end) and its LAPI answers.
            agent.peer.wait_ready(START_TIMEOUT, |peer| {
                if !peer.logs().contains("Starting processing data") {
                    return Err("not processing data yet".to_owned());
                }
                match blocking_get(addr, "/health", Duration::from_secs(1)) {
                    Ok((200, _)) => Ok(()),
                    seen => Err(format!("/health: {seen:?}")),
                }
            })
        });
        agent
    }
}

pub(crate) struct Agent {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    port: u16,
    cscli: PathBuf,
    config: PathBuf,
}

impl Agent {
    pub(crate) fn setup() -> AgentSetup {
        AgentSetup::default()
    }

    /// The LAPI's base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// What crowdsec printed, then its log file.
    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// Registers a bouncer and returns its key.
    pub(crate) fn bouncer_key(&self, name: &str) -> String {
        self.cscli(&["bouncers", "add", name, "-o", "raw"])
            .trim()
            .to_owned()
    }

    /// `cscli -c CFG ARGS...`; panics unless it succeeds; returns stdout.
    pub(crate) fn cscli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.cscli)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cscli");
        assert!(
            out.status.success(),
            "cscli {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The scenarios of the alerts raised against `ip` so far.
    pub(crate) fn alert_scenarios(&self, ip: &str) -> Vec<String> {
        let out = self.cscli(&["alerts", "list", "--ip", ip, "-o", "json"]);
        let alerts: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        alerts
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["scenario"].as_str().map(str::to_owned))
            .collect()
    }
}

/// The agent's `config.yaml`: everything under `dir`, the hub from the package's snapshot, the
/// LAPI on `127.0.0.1:port`.
fn agent_config(dir: &Path, port: u16) -> String {
    let e = dir.display();
    format!(
        r#"common:
  daemonize: false
  log_media: file
  log_dir: {e}/log/
  log_level: info
  working_dir: .
config_paths:
  config_dir: {e}/etc/
  data_dir: {e}/data/
  simulation_path: {e}/etc/simulation.yaml
  hub_dir: {HUB}/
  index_path: {HUB}/.index.json
  notification_dir: {e}/etc/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_dir: {e}/etc/acquis.d/
  parser_routines: 1
db_config:
  log_level: info
  type: sqlite
  db_path: {e}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {e}/etc/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {e}/etc/profiles.yaml
    trusted_ips: [127.0.0.1, "::1"]
prometheus:
  enabled: false
"#
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// Enables hub items as `cscli ... install` would, offline: a symlink per item under
/// `CONFIG/<type>/[<stage>/]`, collections followed recursively.
fn enable_items(config: &Path, items: &[String]) {
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(HUB).join(".index.json")).expect("hub index"),
    )
    .expect("hub index is JSON");
    let mut done = BTreeSet::new();
    let mut todo: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            let (t, n) = i.split_once(':').expect("TYPE:NAME");
            (t.to_owned(), n.to_owned())
        })
        .collect();
    while let Some((kind, name)) = todo.pop() {
        if !done.insert((kind.clone(), name.clone())) {
            continue;
        }
        let item = &index[&kind][&name];
        let rel = item["path"]
            .as_str()
            .unwrap_or_else(|| panic!("hub item {kind}:{name} is not in the snapshot"));
        let mut dir = config.join(&kind);
        if let Some(stage) = item["stage"].as_str() {
            dir = dir.join(stage);
        }
        std::fs::create_dir_all(&dir).expect("item dir");
        let link = dir.join(Path::new(rel).file_name().expect("file name"));
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(HUB).join(rel), &link).expect("symlink item");
        }
        if kind == "collections" {
            for sub in ["parsers", "scenarios", "postoverflows", "collections"] {
                for n in item[sub].as_array().into_iter().flatten() {
                    if let Some(n) = n.as_str() {
                        todo.push((sub.to_owned(), n.to_owned()));
                    }
                }
            }
        }
    }
}
