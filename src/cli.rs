//! The command line: parse it, load and validate the config (exit 64 on a bad one), start
//! logging, then hand over to the server. It lives in the library, behind [`main`], so that the
//! edge modules it reaches (`server`, `logging`, `tls`) stay private to the crate and the
//! compiler flags what nobody uses.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Origin};
use base64::Engine as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jacker-gate",
    version,
    about = "ForwardAuth edge service: CrowdSec bans, rate limit and login in one decision"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run {
        /// Config file (else $JACKER_GATE_CONFIG, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and secret files; print the effective config with secrets redacted.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// GET <URL>/healthz; exit 0 when healthy (for Docker HEALTHCHECK).
    Healthcheck {
        /// The gate's base URL (default: from server.listen of the config).
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a new random 32-byte cookie secret, base64.
    GenSecret,
}

const EXIT_CONFIG: u8 = 64;

/// Runs the command given on the process's command line, with the process's environment.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config, &env),
        Command::CheckConfig { config } => check_config(config, &env),
        Command::Healthcheck { url, config } => healthcheck(url, config, &env),
        Command::GenSecret => {
            let bytes: [u8; 32] = rand::random();
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            );
            ExitCode::SUCCESS
        }
    }
}

fn load(
    flag: Option<PathBuf>,
    env: &[(String, String)],
) -> Result<(config::Config, Origin), ExitCode> {
    let origin = config::locate(flag.as_deref(), env);
    match config::load(&origin, env) {
        Ok(c) => Ok((c, origin)),
        Err(errors) => {
            eprintln!(
                "jacker-gate: invalid configuration ({} problem{}):",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn run(flag: Option<PathBuf>, env: &[(String, String)]) -> ExitCode {
    let (config, origin) = match load(flag, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(&config.log);
    match &origin {
        Origin::Defaults => tracing::info!(
            "no config file given (--config or {}); using built-in defaults",
            config::CONFIG_ENV
        ),
        Origin::File(path) => tracing::info!(config = %path.display(), "config loaded"),
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(config, crate::server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "jacker-gate failed");
            ExitCode::FAILURE
        }
    }
}

fn check_config(flag: Option<PathBuf>, env: &[(String, String)]) -> ExitCode {
    match load(flag, env) {
        Ok((config, origin)) => {
            if origin == Origin::Defaults {
                eprintln!("no config file given; showing the built-in defaults");
            }
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn healthcheck(url: Option<String>, flag: Option<PathBuf>, env: &[(String, String)]) -> ExitCode {
    let base = match url {
        Some(u) => u,
        None => match load(flag, env) {
            Ok((c, _)) => {
                let base = crate::http::health_base_url(c.server.listen);
                match c.server.tls {
                    Some(_) => base.replacen("http://", "https://", 1),
                    None => base,
                }
            }
            Err(code) => return code,
        },
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        eprintln!("unhealthy: --url {base:?} must start with http:// or https://");
        return ExitCode::FAILURE;
    }
    let target = format!("{}/healthz", base.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return ExitCode::FAILURE,
    };
    let ok = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            // The gate asks itself on loopback whether it serves: liveness, not identity (its
            // certificate names `jacker-gate`, not 127.0.0.1).
            .danger_accept_invalid_certs(true)
            .build()
            .ok()?;
        match client.get(&target).send().await {
            Ok(resp) => Some(Ok(resp.status())),
            Err(e) => Some(Err(e)),
        }
    });
    match ok {
        Some(Ok(reqwest::StatusCode::OK)) => ExitCode::SUCCESS,
        Some(Ok(status)) => {
            eprintln!("unhealthy: GET {target} answered {status}");
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            // A plain request to a TLS listener fails without an answer: say what to try.
            let hint = if target.starts_with("http://") {
                " (if the listener speaks TLS, use https:// or --config)"
            } else {
                ""
            };
            eprintln!("unhealthy: GET {target} got no answer: {e}{hint}");
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}
