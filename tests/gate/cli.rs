//! The command line as README gives it: `check-config`, `healthcheck`, `gen-secret`, and `run`
//! on built-in defaults.

use crate::support;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::gate::{serving_addr, Gate};
use crate::support::peer::Peer;
use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_jacker-gate");

fn gate_cmd() -> Command {
    let mut c = Command::new(BIN);
    // The tests' own environment must not leak config into the child.
    for (k, _) in std::env::vars() {
        if k.starts_with("JACKER_GATE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_accepts_a_good_file_and_prints_it_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "top-secret-key").unwrap();
    let file = dir.path().join("gate.toml");
    std::fs::write(
        &file,
        format!(
            "[crowdsec]\nlapi_url = \"http://127.0.0.1:9\"\napi_key_file = \"{}\"\n[[rules]]\nhost = \"*.example.com\"\npolicy = \"public\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = gate_cmd()
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("top-secret-key"), "{printed}");
    assert!(printed.contains(&key.display().to_string()));
    // The printed config is itself a valid config that prints the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let out2 = gate_cmd()
        .args(["check-config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(out2.status.success());
    assert_eq!(String::from_utf8(out2.stdout).unwrap(), printed);
}

#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gate.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"x\"\nbogus = 1\n[rate_limit]\nburst = 0\n[[rules]]\npolicy = \"login\"\n",
    )
    .unwrap();
    let out = gate_cmd()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("JACKER_GATE_AUTH__CLIENT_SECRET", "hunter2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    for key in [
        "server.listen",
        "server.bogus: unknown key",
        "rate_limit.burst",
        "rules[0].policy",
        "JACKER_GATE_AUTH__CLIENT_SECRET",
        "5 problems",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(!err.contains("hunter2"));
    // A file that does not exist is a config error too.
    let out = gate_cmd()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // So is a bad config for `run`: it never starts serving.
    let out = gate_cmd()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// `check-config` refuses exactly what `run` refuses: material `run` used to parse only after
/// check-config had passed (the LAPI's CA and client certificate, the bouncer key as a header,
/// the Redis URL) now fails both with 64, and `run` never starts serving.
#[test]
fn check_config_and_run_refuse_the_same_configs() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let key = write("key", b"bouncer-key\n");
    let bad_key = write("bad_key", b"bouncer\x01key\n");
    let der = write("ca.der", &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x01, 0x01]);
    let not_pem = write("client.pem", b"-----BEGIN CERTIFICATE-----\nnope\n");
    let lapi = |key: &std::path::Path, extra: String| {
        format!("[crowdsec]\nlapi_url = \"https://127.0.0.1:9\"\napi_key_file = {key:?}\n{extra}")
    };
    let cases = [
        (
            "DER CA",
            lapi(&key, format!("ca_file = {der:?}\n")),
            "crowdsec.ca_file",
        ),
        (
            "client certificate",
            lapi(
                &key,
                format!("cert_file = {not_pem:?}\nkey_file = {key:?}\n"),
            ),
            "crowdsec.cert_file",
        ),
        (
            "key as a header",
            lapi(&bad_key, String::new()),
            "crowdsec.api_key_file",
        ),
        (
            "Redis URL",
            "[session]\nstore = \"redis\"\nredis_url = \"redis://[::1\"\n".to_owned(),
            "session.redis_url",
        ),
    ];
    for (what, text, key) in cases {
        let file = write("gate.toml", text.as_bytes());
        let out = gate_cmd()
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "check-config, {what}: {err}");
        assert!(
            err.contains(key),
            "check-config, {what}: {key} missing from {err}"
        );
        let mut run = gate_cmd();
        run.args(["run", "--config"]).arg(&file);
        let mut gate = Peer::new("gate");
        gate.spawn(run);
        let status = gate.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
            panic!("run, {what}: still running with a config check-config refuses")
        });
        assert_eq!(status.code(), Some(64), "run, {what}: {}", gate.logs());
    }
}

#[test]
fn config_comes_from_the_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gate.toml");
    std::fs::write(&file, "[rate_limit]\nper_second = 7\n").unwrap();
    let out = gate_cmd()
        .arg("check-config")
        .env("JACKER_GATE_CONFIG", &file)
        .env("JACKER_GATE_RATE_LIMIT__BURST", "9")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("per_second = 7"), "{printed}");
    assert!(printed.contains("burst = 9"), "{printed}");
}

#[test]
fn run_without_config_says_so_first_and_serves_defaults() {
    // The built-in defaults, as check-config shows them with no file at all.
    let out = gate_cmd().arg("check-config").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "listen = \"127.0.0.1:8080\"",
        "per_second = 50",
        "burst = 100",
        "\"127.0.0.0/8\"",
        "\"::1/128\"",
        "store = \"memory\"",
    ] {
        assert!(
            printed.contains(line),
            "{line} missing from defaults:\n{printed}"
        );
    }
    assert!(!printed.contains("lapi_url") && !printed.contains("provider"));

    // `run` with no config file. The address comes from the environment, port 0, so that the
    // test never collides with whatever else owns 8080 on this machine; the gate says where it
    // serves. There is still no config file.
    let mut command = gate_cmd();
    command
        .arg("run")
        .env("JACKER_GATE_SERVER__LISTEN", "127.0.0.1:0");
    let mut gate = Peer::new("jacker-gate on defaults");
    gate.spawn(command);
    let url = gate.ready(Duration::from_secs(20), |peer| {
        let addr = serving_addr(&peer.logs()).ok_or("no \"serving\" log line yet")?;
        let url = format!("http://{addr}");
        let healthy = Command::new(BIN)
            .args(["healthcheck", "--url", &url])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        healthy
            .then_some(url)
            .ok_or_else(|| format!("`healthcheck --url http://{addr}` fails"))
    });
    let status = gate.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?} ({url})");
    let logs = gate.logs();
    let first = logs.lines().next().unwrap_or_default();
    assert!(
        first.contains("no config file given"),
        "first line: {first}"
    );
    assert!(first.contains("built-in defaults"), "first line: {first}");
}

#[tokio::test]
async fn healthcheck_exit_codes() {
    let gate = Gate::start("");
    let ok = gate_cmd()
        .args(["healthcheck", "--url", &gate.url()])
        .status()
        .unwrap();
    assert!(ok.success());
    // From the config file, as `run` finds it.
    let ok = gate_cmd()
        .arg("healthcheck")
        .arg("--config")
        .arg(gate.config_path())
        .status()
        .unwrap();
    assert!(ok.success());
    let port = support::free_port();
    let dead = gate_cmd()
        .args(["healthcheck", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("unhealthy"));
    // A URL without its scheme says what is missing.
    let bare = gate.url().replacen("http://", "", 1);
    let out = gate_cmd()
        .args(["healthcheck", "--url", &bare])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must start with http:// or https://"), "{err}");
}

#[test]
fn gen_secret_prints_fresh_32_byte_keys() {
    let run = || {
        let out = gate_cmd().arg("gen-secret").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (run(), run());
    assert_ne!(a, b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&a)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert!(jacker_gate::config::decode_cookie_secret(&a).is_ok());
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/jacker-gate.toml");
    let out = gate_cmd()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
