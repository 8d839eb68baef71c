//! Configuration: the one place that reads the config file, the `JACKER_GATE_*` environment and
//! the secret files, and turns them into validated types.
//!
//! Invariants: every problem is reported (not only the first), each naming its key and, for an
//! environment override, the variable; what `run` needs is parsed here — secret files, the
//! cookie secret, TLS material, domains — so `check-config` refuses exactly what `run` would;
//! a feature's required keys are plain fields of its section type, which exists only when the
//! feature is on ([`Config::auth`], [`Crowdsec::lapi`]); secrets only ever come from `*_file`
//! keys and are never printed; [`Config::to_toml`] prints TOML that loads back as the same
//! config.
//!
//! The jobs are split by file: [`env`] merges the environment into the file's table, `read`
//! converts single values, `build` assembles and cross-checks the sections, `print` writes the
//! effective config back as TOML, `warnings` finds settings that are valid but suspicious.

mod build;
mod env;
mod print;
mod read;
mod redis_url;
mod warnings;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

pub use crate::client_ip::parse_net;
use crate::domain::{DomainName, DomainSuffix, RedirectDomain};
pub use crate::ratelimit::{RateKeyKind, RateLimit};
use crate::rules::Rule;
pub use crate::tls::TlsFiles;
pub use redis_url::{HostPort, RedisTarget, RedisUrlError};

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "JACKER_GATE_CONFIG";
/// Google's issuer, the `auth.issuer_url` of `provider = "google"` unless one is given
/// (<https://developers.google.com/identity/openid-connect/openid-connect#discovery>).
pub const GOOGLE_ISSUER_URL: &str = "https://accounts.google.com";

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[server]`: the listener and who may set `X-Forwarded-*`.
    pub server: Server,
    /// `[crowdsec]`: the bouncer; off while `lapi_url` is unset.
    pub crowdsec: Crowdsec,
    /// `[rate_limit]`.
    pub rate_limit: RateLimit,
    /// `rate_limit.store = "redis"`: the Redis every replica keeps one budget per key in
    /// (`rate_limit.redis_url`, else the session store's); `None`: each replica's own budget.
    pub shared_limit: Option<RedisServer>,
    /// `[auth]` with the keys of other sections a login needs; `None` while `auth.provider` is
    /// unset (every route is then `public` unless a rule denies it).
    pub auth: Option<Auth>,
    /// `[session]`.
    pub session: Session,
    /// `[[rules]]` in file order; the first match decides.
    pub rules: Vec<Rule>,
    /// `[log]`.
    pub log: Log,
    /// Keys that were read but change nothing (an `[auth]` key without a provider); `run` and
    /// `check-config` warn about them.
    ignored: Ignored,
}

/// Warnings about keys without effect. They are not part of the config itself: two configs
/// that differ only here behave the same (and `to_toml` leaves such keys out).
#[derive(Debug, Clone, Default)]
struct Ignored(Vec<String>);

impl PartialEq for Ignored {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// The one listener (`/auth`, the login pages, health and metrics).
    pub listen: SocketAddr,
    /// Where `/oauth2/*` is reachable from browsers; builds the callback URL.
    pub public_url: Option<Url>,
    /// Peers whose `X-Forwarded-*` headers are believed; IPv4-mapped networks stored as IPv4.
    pub trusted_proxies: Vec<IpNet>,
    /// Bytes of all request header names and values; more is answered 431. 1 KiB to 1 MiB.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head; slower connections are closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Threads of the async runtime that serves requests (1 to 1024). One is the fastest in
    /// front of Traefik, which sends every call over one HTTP/2 connection: with two, its
    /// streams bounce between threads (measured: 16.7 µs of CPU per call instead of 10.4).
    pub worker_threads: usize,
    /// The TLS listener's certificate, key and optional client CA (checked at load); `None`:
    /// plain HTTP/1.1.
    pub tls: Option<TlsFiles>,
}

/// How the bouncer learns decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrowdsecMode {
    /// The whole list in memory, kept in sync by polling `/v1/decisions/stream`.
    Stream,
    /// One `/v1/decisions?ip=` lookup per new address, cached.
    Live,
}

/// `[crowdsec]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Crowdsec {
    /// The LAPI to ask; `None` turns the bouncer off.
    pub lapi: Option<Lapi>,
    /// Stream or live.
    pub mode: CrowdsecMode,
    /// Time between two stream pulls.
    pub update_interval: Duration,
    /// How often stream mode asks for the whole decision list again (`startup=true`) instead
    /// of a delta; zero: only at start and after a failure. The LAPI can leave decisions out of
    /// deltas (those committed while a pull was being answered), and only a full answer
    /// brings them.
    pub resync_interval: Duration,
    /// Deny every request (403) while no sync succeeded within `max_staleness`.
    pub fail_closed: bool,
    /// How old the last successful sync may be before the mirror counts as stale.
    pub max_staleness: Duration,
    /// Timeout of one stream request (a startup stream of 100k decisions is ~14 MB).
    pub timeout: Duration,
    /// Timeout of one live-mode lookup; it sits on the request path, so it is short.
    pub live_timeout: Duration,
    /// PEM CA bundle that alone is trusted for an `https` LAPI.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for a LAPI that authenticates bouncers by mTLS; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The LAPI the bouncer talks to, with its key and TLS material read and parsed at load.
#[derive(Clone)]
pub struct Lapi {
    /// Base URL (`http://crowdsec:8080`).
    pub url: Url,
    /// The bouncer key (`cscli bouncers add`), sent as `X-Api-Key`; checked at load to be a
    /// valid header value.
    pub api_key: SecretFile,
    /// The roots of `crowdsec.ca_file`; empty: the system's roots.
    pub roots: Vec<reqwest::Certificate>,
    /// The client certificate and key of `crowdsec.cert_file`/`key_file`.
    pub identity: Option<reqwest::Identity>,
}

impl PartialEq for Lapi {
    /// The TLS material is derived from paths that [`Crowdsec`] compares.
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.api_key == other.api_key
    }
}

impl fmt::Debug for Lapi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lapi")
            .field("url", &self.url.as_str())
            .field("api_key", &self.api_key)
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// The OpenID provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Google: `issuer_url` defaults to Google's, and the `hd` claim must match the domain.
    Google,
    /// Any issuer with OpenID discovery.
    Oidc,
}

/// Everything a login needs, from `[auth]` and the keys of `[server]` and `[session]` it
/// requires; exists only when `auth.provider` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    /// `auth.provider`.
    pub provider: Provider,
    /// The effective issuer: `auth.issuer_url`, or Google's for `provider = "google"`.
    pub issuer_url: Url,
    /// The OAuth client id.
    pub client_id: String,
    /// The OAuth client secret (`auth.client_secret_file`).
    pub client_secret: SecretFile,
    /// Email domains allowed to sign in, compared exactly.
    pub allowed_domains: Vec<DomainName>,
    /// Single addresses allowed whatever their domain, lower case.
    pub allowed_emails: Vec<String>,
    /// Where return URLs may lead: as configured, or the cookie domains when the config names
    /// none (the public URL's host is added by [`Config::redirect_domains`]).
    pub redirect_domains: Vec<RedirectDomain>,
    /// `server.public_url`, required for a login.
    pub public_url: Url,
    /// `session.cookie_secret_file`, decoded; required for a login.
    pub cookie_secret: CookieSecret,
}

/// Where sessions live.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// In this process: one replica only.
    Memory,
    /// In Redis, shared by every replica.
    Redis(RedisServer),
}

/// A Redis to connect to.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisServer {
    /// One Redis, a Sentinel set or a Cluster; never a password.
    pub target: RedisTarget,
    /// The password, from a secret file.
    pub password: Option<SecretFile>,
}

/// `session.store` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoreKind {
    Memory,
    Redis,
}

/// `rate_limit.store` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RateStoreKind {
    Local,
    Redis,
}

/// `[session]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Where sessions and login state live.
    pub store: Store,
    /// The session cookie's name; the login binding cookie is this name plus `_login`.
    pub cookie_name: String,
    /// Cookie domains; the first that covers the request host is used, none: a host-only cookie.
    pub cookie_domains: Vec<DomainSuffix>,
    /// The cookie signing secret, decoded (at least 32 bytes).
    pub cookie_secret: Option<CookieSecret>,
    /// Whether cookies carry `Secure` (and only `https` return URLs are followed).
    pub cookie_secure: bool,
    /// How long a session lives.
    pub lifetime: Duration,
    /// How long a replica trusts a session it has checked without asking the store again.
    pub cache_ttl: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines; ANSI colours only on a terminal.
    Text,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// JSON or text.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `jacker_gate=debug`), checked at load.
    pub level: String,
}

/// Why a secret file or the cookie secret in it was refused. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read as text.
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        /// The secret file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("secret file {} is empty", path.display())]
    Empty {
        /// The secret file.
        path: PathBuf,
    },
    /// The cookie secret is not base64.
    #[error("is not base64 (generate one with `jacker-gate gen-secret`)")]
    NotBase64,
    /// The cookie secret decodes to fewer than 32 bytes.
    #[error(
        "holds {0} bytes; at least 32 random bytes are needed (generate one with `jacker-gate gen-secret`)"
    )]
    TooShort(usize),
}

/// A secret read from a file. Compares and prints by path; the contents never reach `Debug`.
#[derive(Clone)]
pub struct SecretFile {
    /// Where the secret was read from.
    pub path: PathBuf,
    contents: Arc<str>,
}

impl SecretFile {
    /// Reads the file, dropping trailing whitespace (secret files are often written by `echo`).
    ///
    /// # Errors
    /// The file cannot be read as UTF-8 text, or holds only whitespace.
    pub fn read(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            contents: trimmed.into(),
        })
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.contents
    }
}

impl PartialEq for SecretFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

/// The cookie signing secret: its file and the decoded bytes (at least 32).
#[derive(Clone, PartialEq)]
pub struct CookieSecret {
    /// The file it came from.
    pub file: SecretFile,
    key: Arc<[u8]>,
}

impl CookieSecret {
    /// The decoded key bytes; never log them.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieSecret({})", self.file.path.display())
    }
}

impl TryFrom<SecretFile> for CookieSecret {
    type Error = SecretError;

    fn try_from(file: SecretFile) -> Result<Self, SecretError> {
        let key = decode_cookie_secret(file.expose())?.into();
        Ok(Self { file, key })
    }
}

/// Decodes a cookie secret: base64, standard or URL-safe alphabet, padding optional.
///
/// # Errors
/// [`SecretError::NotBase64`], or [`SecretError::TooShort`] under 32 bytes once decoded.
pub fn decode_cookie_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let t = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| SecretError::NotBase64)?;
    if bytes.len() < 32 {
        return Err(SecretError::TooShort(bytes.len()));
    }
    Ok(bytes)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: Server {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                public_url: None,
                trusted_proxies: vec![
                    "127.0.0.0/8".parse().expect("valid literal"),
                    "::1/128".parse().expect("valid literal"),
                ],
                max_header_bytes: 32 * 1024,
                header_read_timeout: Duration::from_secs(10),
                max_connections: 10_000,
                worker_threads: 1,
                tls: None,
            },
            crowdsec: Crowdsec {
                lapi: None,
                mode: CrowdsecMode::Stream,
                update_interval: Duration::from_secs(10),
                resync_interval: Duration::from_secs(600),
                fail_closed: false,
                max_staleness: Duration::from_secs(300),
                timeout: Duration::from_secs(30),
                live_timeout: Duration::from_millis(500),
                ca_file: None,
                cert_file: None,
                key_file: None,
            },
            rate_limit: RateLimit::default(),
            shared_limit: None,
            auth: None,
            session: Session {
                store: Store::Memory,
                cookie_name: "_jacker_gate".to_owned(),
                cookie_domains: Vec::new(),
                cookie_secret: None,
                cookie_secure: true,
                lifetime: Duration::from_secs(7 * 86_400),
                cache_ttl: Duration::from_secs(5),
            },
            rules: Vec::new(),
            log: Log {
                format: LogFormat::Json,
                level: "info".to_owned(),
            },
            ignored: Ignored::default(),
        }
    }
}

impl Config {
    /// Where return URLs may lead: `auth.redirect_domains` (the cookie domains unless the config
    /// names others), and the public URL's own host (and port) always. Empty when login is off.
    pub fn redirect_domains(&self) -> Vec<RedirectDomain> {
        let Some(auth) = &self.auth else {
            return Vec::new();
        };
        let mut out = auth.redirect_domains.clone();
        if let Some(host) = auth.public_url.host_str() {
            // The loader checked that the public URL's host is a host name or an address,
            // both of which parse as an exact entry.
            if let Ok(domain) = DomainSuffix::parse(host) {
                out.push(RedirectDomain {
                    domain,
                    port: auth.public_url.port(),
                });
            }
        }
        out
    }
}

/// One problem with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key (`session.redis_url`), with the environment variable when it came from one.
    pub key: String,
    /// What is wrong, lower case.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where the configuration came from, for the first log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file (`--config` or `$JACKER_GATE_CONFIG`).
    File(PathBuf),
    /// No file: built-in defaults (and the environment).
    Defaults,
}

/// Finds the config file as `run` does: `--config`, else `$JACKER_GATE_CONFIG`, else none.
pub fn locate(flag: Option<&Path>, env: &[(String, String)]) -> Origin {
    if let Some(path) = flag {
        return Origin::File(path.to_owned());
    }
    match env.iter().find(|(k, _)| k == CONFIG_ENV) {
        Some((_, v)) if !v.is_empty() => Origin::File(PathBuf::from(v)),
        _ => Origin::Defaults,
    }
}

/// Loads the config from `origin`, applying environment overrides from `env`.
///
/// # Errors
/// Every problem found, each with its key; an unreadable file is one problem alone.
pub fn load(origin: &Origin, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let text = match origin {
        Origin::File(path) => std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read config file: {e}"),
            }])
        })?,
        Origin::Defaults => String::new(),
    };
    parse(&text, env)
}

/// Parses config text and environment overrides. Tests call this with a literal map.
///
/// # Errors
/// Every problem found, each with its key; a TOML syntax error is reported alone.
pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            // A syntax error leaves nothing to validate; report it alone, with its position but
            // without the line itself, which may hold a credential written by mistake.
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            return Err(ConfigErrors(vec![ConfigError {
                key: "config".to_owned(),
                message: format!("invalid TOML{at}: {}", e.message().trim_end()),
            }]));
        }
    };
    let mut errors = Vec::new();
    let env_keys = env::apply(&mut table, env, &mut errors);
    let mut cx = read::Cx::new(errors, &env_keys);
    let config = build::build(&mut table, &mut cx);
    match cx.into_errors() {
        errors if errors.is_empty() => Ok(config),
        errors => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limit;
