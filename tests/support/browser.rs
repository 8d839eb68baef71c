//! A real headless Chromium (Debian's `/usr/bin/chromium`) driven by playwright-core through
//! `tests/support/browser/run.mjs`: one browser context (one user, one cookie jar) visits a list
//! of URLs, and the script reports, for each, where the page ended, the chain of main-frame
//! navigations, what was blocked, the page text and the cookies.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::login::{require_login_binary, require_node_package};
use super::peer::Peer;

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
    let mut command = Command::new(node);
    command
        .arg(script_dir.join("run.mjs"))
        .arg(&scenario_path)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"));
    let mut script = Peer::new("the browser script");
    script.spawn(command);
    let Some(status) = script.wait_exit(RUN_TIMEOUT) else {
        script.stop();
        panic!(
            "the browser script did not finish within {RUN_TIMEOUT:?}\noutput:\n{}",
            script.logs()
        );
    };
    let stdout = script.stdout();
    assert!(
        status.success(),
        "the browser script failed ({status}):\noutput:\n{}",
        script.logs()
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("browser report is not JSON ({e}): {}", script.logs()))
}
