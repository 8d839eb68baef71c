//! A real headless Chromium (Debian's `/usr/bin/chromium`) driven by playwright-core through
//! `tests/support/browser/run.mjs`: one browser context (one user, one cookie jar) visits a list
//! of URLs, and the script reports, for each, where the page ended, the chain of main-frame
//! navigations, what was blocked, the page text and the cookies.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::login::{require_login_binary, require_node_package};

/// The whole run (browser start and every step) must end within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// `*.example.test` resolves to 127.0.0.1 inside the browser only.
pub(crate) const HOST_RULES: &str = "MAP *.example.test 127.0.0.1";

/// One visit.
#[derive(Clone, Debug, Default)]
pub(crate) struct Step {
    pub(crate) goto: String,
    /// URL prefixes whose requests are aborted (recorded in the step's `blocked`). Chromium
    /// follows redirects without asking the script, so this stops the requests a step starts,
    /// not the hops of a redirect chain.
    pub(crate) block: Vec<String>,
    pub(crate) screenshot: Option<PathBuf>,
}

impl Step {
    pub(crate) fn visit(url: &str) -> Step {
        Step {
            goto: url.to_owned(),
            ..Step::default()
        }
    }

    pub(crate) fn blocking(mut self, prefix: &str) -> Step {
        self.block.push(prefix.to_owned());
        self
    }

    pub(crate) fn screenshot(mut self, path: PathBuf) -> Step {
        self.screenshot = Some(path);
        self
    }
}

/// Runs `steps` in one fresh browser context and returns the script's report: `{"version",
/// "steps": [{"goto", "url", "status", "error", "chain": [{"url","status","location"}],
/// "blocked", "body", "cookies": [...]}]}`.
pub(crate) fn run(steps: &[Step]) -> Value {
    let chromium = PathBuf::from("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "Debian's chromium is not installed; run `{}`",
        super::login::INSTALL
    );
    let node = require_login_binary("node");
    let script_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/browser");
    require_node_package(&script_dir, "playwright-core");
    let dir = tempfile::Builder::new()
        .prefix("jacker-gate-browser-")
        .tempdir()
        .expect("browser temp dir");
    let scenario = json!({
        "host_rules": HOST_RULES,
        "timeout_ms": 20000,
        "steps": steps.iter().map(|s| json!({
            "goto": s.goto,
            "block": s.block,
            "screenshot": s.screenshot,
        })).collect::<Vec<_>>(),
    });
    let scenario_path = dir.path().join("scenario.json");
    std::fs::write(&scenario_path, scenario.to_string()).expect("write scenario");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(node)
        .arg(script_dir.join("run.mjs"))
        .arg(&scenario_path)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn node run.mjs");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for browser script") {
            break status;
        }
        if start.elapsed() > RUN_TIMEOUT {
            super::kill_and_reap(&mut child);
            panic!(
                "the browser script did not finish within {RUN_TIMEOUT:?}\nstderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "the browser script failed ({status}):\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("browser report is not JSON ({e}): {stdout}\n{stderr}"))
}
