//! Configuration: the one place that reads the config file, the `JACKER_GATE_*` environment and
//! the secret files, and turns them into validated types.
//!
//! Invariants: every problem is reported (not only the first), each naming its key and, for an
//! environment override, the variable; secrets only ever come from `*_file` keys and are never
//! printed; [`Config::to_toml`] prints TOML that loads back as the same config.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use toml::Value;
use url::Url;

use crate::duration::{format_human, parse_human};
use crate::rules::{HostPattern, PathPrefix, Policy, Rule};

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "JACKER_GATE_CONFIG";
/// Google's issuer, the `auth.issuer_url` of `provider = "google"` unless one is given
/// (<https://developers.google.com/identity/openid-connect/openid-connect#discovery>).
pub const GOOGLE_ISSUER_URL: &str = "https://accounts.google.com";
const ENV_PREFIX: &str = "JACKER_GATE_";

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub crowdsec: Crowdsec,
    pub rate_limit: RateLimit,
    pub auth: Auth,
    pub session: Session,
    pub rules: Vec<Rule>,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    pub public_url: Option<Url>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head; slower connections are closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Threads of the async runtime that serves requests (1 to 1024). One is the fastest in
    /// front of Traefik, which sends every call over one HTTP/2 connection: with two, its
    /// streams bounce between threads (measured: 16.7 µs of CPU per call instead of 10.4).
    pub worker_threads: usize,
    /// PEM certificate chain and key of a TLS listener (HTTP/2 and HTTP/1.1 by ALPN); both or
    /// neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: with it, every client must present a certificate from this CA.
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Server {
    /// The TLS listener's files, when TLS is on.
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_client_ca_file.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdsecMode {
    Stream,
    Live,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Crowdsec {
    /// `None` turns the bouncer off.
    pub lapi_url: Option<Url>,
    pub api_key_file: Option<SecretFile>,
    pub mode: CrowdsecMode,
    pub update_interval: Duration,
    /// How often stream mode asks for the whole decision list again (`startup=true`) instead
    /// of a delta; zero: only at start and after a failure. The LAPI can leave decisions out of
    /// deltas (those committed while a pull was being answered), and only a full answer
    /// brings them.
    pub resync_interval: Duration,
    pub fail_closed: bool,
    pub max_staleness: Duration,
    /// Timeout of one stream request (a startup stream of 100k decisions is ~14 MB).
    pub timeout: Duration,
    /// Timeout of one live-mode lookup; it sits on the request path, so it is short.
    pub live_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Crowdsec {
    pub fn enabled(&self) -> bool {
        self.lapi_url.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKeyKind {
    Ip,
    User,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// 0 turns the limiter off.
    pub per_second: u32,
    pub burst: u32,
    pub key: RateKeyKind,
    pub ipv6_prefix: u8,
    pub exempt: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Google,
    Oidc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    /// `None` turns login off.
    pub provider: Option<Provider>,
    pub issuer_url: Option<Url>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<SecretFile>,
    pub allowed_domains: Vec<String>,
    pub allowed_emails: Vec<String>,
    pub redirect_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub store: StoreKind,
    pub redis_url: Option<String>,
    pub redis_password_file: Option<SecretFile>,
    pub cookie_name: String,
    pub cookie_domains: Vec<String>,
    pub cookie_secret_file: Option<SecretFile>,
    pub cookie_secure: bool,
    pub lifetime: Duration,
    pub cache_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

/// A secret read from a file. Compares and prints by path; the contents never reach `Debug`.
#[derive(Clone)]
pub struct SecretFile {
    pub path: PathBuf,
    contents: Arc<str>,
}

impl SecretFile {
    /// Reads the file, dropping trailing whitespace (secret files are often written by `echo`).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            return Err(format!("secret file {} is empty", path.display()));
        }
        Ok(Self {
            path: path.to_owned(),
            contents: trimmed.into(),
        })
    }

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
                tls_cert_file: None,
                tls_key_file: None,
                tls_client_ca_file: None,
            },
            crowdsec: Crowdsec {
                lapi_url: None,
                api_key_file: None,
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
            rate_limit: RateLimit {
                per_second: 50,
                burst: 100,
                key: RateKeyKind::Ip,
                ipv6_prefix: 64,
                exempt: Vec::new(),
            },
            auth: Auth {
                provider: None,
                issuer_url: None,
                client_id: None,
                client_secret_file: None,
                allowed_domains: Vec::new(),
                allowed_emails: Vec::new(),
                redirect_domains: Vec::new(),
            },
            session: Session {
                store: StoreKind::Memory,
                redis_url: None,
                redis_password_file: None,
                cookie_name: "_jacker_gate".to_owned(),
                cookie_domains: Vec::new(),
                cookie_secret_file: None,
                cookie_secure: true,
                lifetime: Duration::from_secs(7 * 86_400),
                cache_ttl: Duration::from_secs(5),
            },
            rules: Vec::new(),
            log: Log {
                format: LogFormat::Json,
                level: "info".to_owned(),
            },
        }
    }
}

/// One problem with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
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
    File(PathBuf),
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
pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            // A syntax error leaves nothing to validate; report it alone, with its position.
            return Err(ConfigErrors(vec![ConfigError {
                key: "config".to_owned(),
                message: format!("invalid TOML: {}", e.to_string().trim_end()),
            }]));
        }
    };
    let env_keys = apply_env(&mut table, env, &mut errors);
    let mut cx = Cx {
        errors,
        env_keys: &env_keys,
    };
    let config = build(&mut table, &mut cx);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

/// Merges `JACKER_GATE_<SECTION>__<KEY>` variables into the table as strings; the typed readers
/// below convert them. Returns the dotted keys that came from the environment.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    errors: &mut Vec<ConfigError>,
) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV {
            continue;
        }
        let Some((section, key)) = rest.split_once("__") else {
            errors.push(ConfigError {
                key: name.clone(),
                message: "not a config key: expected JACKER_GATE_<SECTION>__<KEY>".to_owned(),
            });
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if section == "rules" {
            errors.push(ConfigError {
                key: name.clone(),
                message: "[[rules]] come only from the config file".to_owned(),
            });
            continue;
        }
        if !SECTIONS.contains(&section.as_str()) || key.is_empty() || key.contains("__") {
            errors.push(ConfigError {
                key: name.clone(),
                message: format!("unknown config key {section}.{key}"),
            });
            continue;
        }
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        match entry {
            Value::Table(t) => {
                t.insert(key.clone(), Value::String(value.clone()));
                keys.insert(format!("{section}.{key}"));
            }
            _ => errors.push(ConfigError {
                key: section.clone(),
                message: "must be a table".to_owned(),
            }),
        }
    }
    keys
}

const SECTIONS: [&str; 6] = ["server", "crowdsec", "rate_limit", "auth", "session", "log"];

struct Cx<'a> {
    errors: Vec<ConfigError>,
    env_keys: &'a BTreeSet<String>,
}

impl Cx<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        let key = if self.env_keys.contains(key) {
            let (s, k) = key.split_once('.').unwrap_or((key, ""));
            format!(
                "{key} (from {ENV_PREFIX}{}__{})",
                s.to_ascii_uppercase(),
                k.to_ascii_uppercase()
            )
        } else {
            key.to_owned()
        };
        self.errors.push(ConfigError {
            key,
            message: message.into(),
        });
    }
}

/// Reads the keys of one table, recording unknown keys and type errors against the dotted name.
struct Section {
    name: String,
    table: toml::Table,
}

impl Section {
    fn take(root: &mut toml::Table, name: &str, cx: &mut Cx<'_>) -> Self {
        let table = match root.remove(name) {
            None => toml::Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                cx.err(name, "must be a table");
                toml::Table::new()
            }
        };
        Self {
            name: name.to_owned(),
            table,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// Removes `key` and converts it; `None` when absent or invalid (the error is recorded).
    fn get<T>(
        &mut self,
        key: &str,
        cx: &mut Cx<'_>,
        convert: impl FnOnce(&Value, bool) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.table.remove(key)?;
        let dotted = self.key(key);
        let from_env = cx.env_keys.contains(&dotted);
        match convert(&value, from_env) {
            Ok(v) => Some(v),
            Err(message) => {
                cx.err(&dotted, message);
                None
            }
        }
    }

    fn finish(self, cx: &mut Cx<'_>) {
        for key in self.table.keys() {
            cx.err(&format!("{}.{key}", self.name), "unknown key");
        }
    }
}

fn string(v: &Value, _env: bool) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", other.type_str())),
    }
}

fn boolean(v: &Value, env: bool) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        Value::String(s) if env => match s.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        other => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
    }
}

fn integer(v: &Value, env: bool) -> Result<i64, String> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::String(s) if env => s
            .trim()
            .parse()
            .map_err(|_| format!("expected an integer, found {s:?}")),
        other => Err(format!("expected an integer, found {}", other.type_str())),
    }
}

fn ranged<T: TryFrom<i64>>(v: &Value, env: bool, min: i64, max: i64) -> Result<T, String> {
    let i = integer(v, env)?;
    if i < min || i > max {
        return Err(format!("must be between {min} and {max}, found {i}"));
    }
    T::try_from(i).map_err(|_| format!("out of range: {i}"))
}

fn duration(v: &Value, _env: bool) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_human(s),
        other => Err(format!(
            "expected a duration string such as \"10s\", found {}",
            other.type_str()
        )),
    }
}

fn string_list(v: &Value, env: bool) -> Result<Vec<String>, String> {
    let parsed;
    let v = match v {
        Value::String(s) if env => {
            let t: toml::Table = format!("v = {s}").parse().map_err(|_| {
                format!("expected a TOML list such as '[\"a\",\"b\"]', found {s:?}")
            })?;
            parsed = t.get("v").cloned().unwrap_or(Value::Array(Vec::new()));
            &parsed
        }
        v => v,
    };
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "item {i}: expected a string, found {}",
                    other.type_str()
                )),
            })
            .collect(),
        other => Err(format!(
            "expected a list of strings, found {}",
            other.type_str()
        )),
    }
}

fn nets(v: &Value, env: bool) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for s in string_list(v, env)? {
        match parse_net(&s) {
            Some(n) => out.push(n),
            None => bad.push(s),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(format!("not an IP address or CIDR: {}", bad.join(", ")))
    }
}

/// Parses `10.0.0.0/8` or a bare address (as a single-address network). IPv4-mapped IPv6
/// networks are stored as IPv4, since client addresses are compared after the same mapping.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.trim().parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.trim().parse::<std::net::IpAddr>().ok()?),
    };
    Some(match net {
        IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
            Some(v4) if n.prefix_len() >= 96 => {
                IpNet::V4(ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).ok()?.trunc())
            }
            _ => IpNet::V6(n.trunc()),
        },
        IpNet::V4(n) => IpNet::V4(n.trunc()),
    })
}

fn web_url(v: &Value, env: bool) -> Result<Url, String> {
    let s = string(v, env)?;
    // The value may hold credentials by mistake: never echo it once it has an `@`.
    let shown = if s.contains('@') {
        "(value hidden)".to_owned()
    } else {
        format!("{s:?}")
    };
    let url = Url::parse(&s).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info (credentials belong in *_file keys)".to_owned());
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("must be an http or https URL, found {shown}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not carry a query or fragment: {shown}"));
    }
    Ok(url)
}

fn secret(v: &Value, env: bool) -> Result<SecretFile, String> {
    let s = string(v, env)?;
    SecretFile::read(Path::new(&s))
}

fn path(v: &Value, env: bool) -> Result<PathBuf, String> {
    let s = string(v, env)?;
    let p = PathBuf::from(&s);
    std::fs::metadata(&p).map_err(|e| format!("cannot read {s}: {e}"))?;
    Ok(p)
}

fn domain_list(v: &Value, env: bool) -> Result<Vec<String>, String> {
    domains(v, env, false)
}

/// `redirect_domains` entries may name a port (`example.com:8443`); other domain lists may not.
fn redirect_domain_list(v: &Value, env: bool) -> Result<Vec<String>, String> {
    domains(v, env, true)
}

fn domains(v: &Value, env: bool, ports: bool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for s in string_list(v, env)? {
        let lower = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = lower.strip_prefix('.').unwrap_or(&lower);
        let (host, port) = match bare.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (bare, None),
        };
        let port_ok = match port {
            None => true,
            Some(p) => ports && !p.starts_with('0') && p.parse::<u16>().is_ok_and(|n| n > 0),
        };
        if host.is_empty() || !host.split('.').all(is_dns_label) || !port_ok {
            return Err(format!(
                "not a domain name{}: {s:?}",
                if ports {
                    " (with an optional :port)"
                } else {
                    ""
                }
            ));
        }
        out.push(lower);
    }
    Ok(out)
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Decodes a cookie secret: base64, standard or URL-safe alphabet, padding optional.
pub fn decode_cookie_secret(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let t = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| "is not base64 (generate one with `jacker-gate gen-secret`)".to_owned())?;
    if bytes.len() < 32 {
        return Err(format!(
            "holds {} bytes; at least 32 random bytes are needed (generate one with `jacker-gate gen-secret`)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn build(root: &mut toml::Table, cx: &mut Cx<'_>) -> Config {
    let mut c = Config::default();

    let mut s = Section::take(root, "server", cx);
    if let Some(v) = s.get("listen", cx, |v, e| {
        let t = string(v, e)?;
        t.parse::<SocketAddr>()
            .map_err(|_| format!("expected address:port such as \"0.0.0.0:8080\", found {t:?}"))
    }) {
        c.server.listen = v;
    }
    if let Some(v) = s.get("public_url", cx, web_url) {
        c.server.public_url = Some(v);
    }
    if let Some(v) = s.get("trusted_proxies", cx, nets) {
        c.server.trusted_proxies = v;
    }
    if let Some(v) = s.get("max_header_bytes", cx, |v, e| ranged(v, e, 1024, 1 << 20)) {
        c.server.max_header_bytes = v;
    }
    if let Some(v) = s.get("header_read_timeout", cx, duration) {
        c.server.header_read_timeout = v;
    }
    if let Some(v) = s.get("max_connections", cx, |v, e| ranged(v, e, 1, 1_000_000)) {
        c.server.max_connections = v;
    }
    if let Some(v) = s.get("worker_threads", cx, |v, e| ranged(v, e, 1, 1024)) {
        c.server.worker_threads = v;
    }
    // Whether each TLS key was written, whatever its value turned out to be: a file that cannot
    // be read is one problem, not also a missing partner.
    let given = |k: &str| s.table.contains_key(k);
    let (cert_given, key_given, ca_given) = (
        given("tls_cert_file"),
        given("tls_key_file"),
        given("tls_client_ca_file"),
    );
    for (key, slot) in [
        ("tls_cert_file", &mut c.server.tls_cert_file),
        ("tls_key_file", &mut c.server.tls_key_file),
        ("tls_client_ca_file", &mut c.server.tls_client_ca_file),
    ] {
        if let Some(v) = s.get(key, cx, path) {
            *slot = Some(v);
        }
    }
    s.finish(cx);
    if cert_given != key_given {
        cx.err(
            "server.tls_cert_file",
            "tls_cert_file and tls_key_file go together (the listener's certificate and key)",
        );
    } else if ca_given && !cert_given {
        cx.err(
            "server.tls_client_ca_file",
            "needs tls_cert_file and tls_key_file (client certificates are asked for over TLS)",
        );
    }
    for (key, problem) in crate::tls::check(
        c.server
            .tls_cert_file
            .as_deref()
            .zip(c.server.tls_key_file.as_deref()),
        c.server.tls_client_ca_file.as_deref(),
    ) {
        cx.err(key, problem);
    }
    if c.server.header_read_timeout.is_zero() {
        cx.err("server.header_read_timeout", "must be more than 0s");
    }

    let mut s = Section::take(root, "crowdsec", cx);
    let present_key = s.table.contains_key("api_key_file");
    if let Some(v) = s.get("lapi_url", cx, web_url) {
        c.crowdsec.lapi_url = Some(v);
    }
    if let Some(v) = s.get("api_key_file", cx, secret) {
        c.crowdsec.api_key_file = Some(v);
    }
    if let Some(v) = s.get("mode", cx, |v, e| match string(v, e)?.as_str() {
        "stream" => Ok(CrowdsecMode::Stream),
        "live" => Ok(CrowdsecMode::Live),
        other => Err(format!("expected \"stream\" or \"live\", found {other:?}")),
    }) {
        c.crowdsec.mode = v;
    }
    for (key, slot) in [
        ("update_interval", &mut c.crowdsec.update_interval),
        ("resync_interval", &mut c.crowdsec.resync_interval),
        ("max_staleness", &mut c.crowdsec.max_staleness),
        ("timeout", &mut c.crowdsec.timeout),
        ("live_timeout", &mut c.crowdsec.live_timeout),
    ] {
        if let Some(v) = s.get(key, cx, duration) {
            *slot = v;
        }
    }
    if let Some(v) = s.get("fail_closed", cx, boolean) {
        c.crowdsec.fail_closed = v;
    }
    for (key, slot) in [
        ("ca_file", &mut c.crowdsec.ca_file),
        ("cert_file", &mut c.crowdsec.cert_file),
        ("key_file", &mut c.crowdsec.key_file),
    ] {
        if let Some(v) = s.get(key, cx, path) {
            *slot = Some(v);
        }
    }
    s.finish(cx);
    let cs = &c.crowdsec;
    if cs.lapi_url.is_some() && cs.api_key_file.is_none() && !present_key {
        cx.err(
            "crowdsec.api_key_file",
            "required when crowdsec.lapi_url is set (a file holding the bouncer key from `cscli bouncers add`)",
        );
    }
    if cs.lapi_url.is_none() && cs.api_key_file.is_some() {
        cx.err(
            "crowdsec.lapi_url",
            "required when crowdsec.api_key_file is set (CrowdSec stays off without it)",
        );
    }
    if cs.cert_file.is_some() != cs.key_file.is_some() {
        cx.err(
            "crowdsec.cert_file",
            "cert_file and key_file go together (client certificate for mTLS)",
        );
    }
    if cs.update_interval < Duration::from_millis(100) {
        cx.err("crowdsec.update_interval", "must be at least 100ms");
    }
    if !cs.resync_interval.is_zero() && cs.resync_interval < cs.update_interval {
        cx.err(
            "crowdsec.resync_interval",
            "must be at least crowdsec.update_interval, or \"0s\" for never",
        );
    }
    if cs.max_staleness < cs.update_interval {
        cx.err(
            "crowdsec.max_staleness",
            "must be at least crowdsec.update_interval",
        );
    }
    if cs.timeout.is_zero() || cs.live_timeout.is_zero() {
        cx.err("crowdsec.timeout", "timeouts must be more than 0s");
    }

    let mut s = Section::take(root, "rate_limit", cx);
    if let Some(v) = s.get("per_second", cx, |v, e| ranged(v, e, 0, 10_000_000)) {
        c.rate_limit.per_second = v;
    }
    if let Some(v) = s.get("burst", cx, |v, e| ranged(v, e, 1, 10_000_000)) {
        c.rate_limit.burst = v;
    }
    if let Some(v) = s.get("key", cx, |v, e| match string(v, e)?.as_str() {
        "ip" => Ok(RateKeyKind::Ip),
        "user" => Ok(RateKeyKind::User),
        other => Err(format!("expected \"ip\" or \"user\", found {other:?}")),
    }) {
        c.rate_limit.key = v;
    }
    if let Some(v) = s.get("ipv6_prefix", cx, |v, e| ranged(v, e, 1, 128)) {
        c.rate_limit.ipv6_prefix = v;
    }
    if let Some(v) = s.get("exempt", cx, nets) {
        c.rate_limit.exempt = v;
    }
    s.finish(cx);

    let mut s = Section::take(root, "auth", cx);
    let auth_secret_given = s.table.contains_key("client_secret_file");
    if let Some(v) = s.get("provider", cx, |v, e| match string(v, e)?.as_str() {
        "google" => Ok(Provider::Google),
        "oidc" => Ok(Provider::Oidc),
        other => Err(format!("expected \"google\" or \"oidc\", found {other:?}")),
    }) {
        c.auth.provider = Some(v);
    }
    if let Some(v) = s.get("issuer_url", cx, web_url) {
        c.auth.issuer_url = Some(v);
    }
    if let Some(v) = s.get("client_id", cx, string) {
        c.auth.client_id = Some(v);
    }
    if let Some(v) = s.get("client_secret_file", cx, secret) {
        c.auth.client_secret_file = Some(v);
    }
    if let Some(v) = s.get("allowed_domains", cx, domain_list) {
        c.auth.allowed_domains = v;
    }
    if let Some(v) = s.get("allowed_emails", cx, |v, e| {
        let list: Vec<String> = string_list(v, e)?
            .iter()
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        for addr in &list {
            if crate::oauth::email::normalize(addr).is_none() {
                return Err(format!("not a plain email address: {addr:?}"));
            }
        }
        Ok(list)
    }) {
        c.auth.allowed_emails = v;
    }
    if let Some(v) = s.get("redirect_domains", cx, redirect_domain_list) {
        c.auth.redirect_domains = v;
    }
    s.finish(cx);

    let mut s = Section::take(root, "session", cx);
    let cookie_secret_given = s.table.contains_key("cookie_secret_file");
    if let Some(v) = s.get("store", cx, |v, e| match string(v, e)?.as_str() {
        "memory" => Ok(StoreKind::Memory),
        "redis" => Ok(StoreKind::Redis),
        other => Err(format!("expected \"memory\" or \"redis\", found {other:?}")),
    }) {
        c.session.store = v;
    }
    if let Some(v) = s.get("redis_url", cx, |v, e| {
        let t = string(v, e)?;
        let u = Url::parse(&t).map_err(|e| format!("invalid URL: {e}"))?;
        if !matches!(u.scheme(), "redis" | "rediss") {
            return Err("must be a redis:// or rediss:// URL".to_owned());
        }
        if u.password().is_some() {
            return Err("must not hold a password; use session.redis_password_file".to_owned());
        }
        Ok(t)
    }) {
        c.session.redis_url = Some(v);
    }
    if let Some(v) = s.get("redis_password_file", cx, secret) {
        c.session.redis_password_file = Some(v);
    }
    if let Some(v) = s.get("cookie_name", cx, |v, e| {
        let t = string(v, e)?;
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if ok {
            Ok(t)
        } else {
            Err(format!("not a cookie name (letters, digits, _ - .): {t:?}"))
        }
    }) {
        c.session.cookie_name = v;
    }
    if let Some(v) = s.get("cookie_domains", cx, domain_list) {
        c.session.cookie_domains = v;
    }
    if let Some(v) = s.get("cookie_secret_file", cx, |v, e| {
        let f = secret(v, e)?;
        decode_cookie_secret(f.expose())?;
        Ok(f)
    }) {
        c.session.cookie_secret_file = Some(v);
    }
    if let Some(v) = s.get("cookie_secure", cx, boolean) {
        c.session.cookie_secure = v;
    }
    if let Some(v) = s.get("lifetime", cx, duration) {
        c.session.lifetime = v;
    }
    if let Some(v) = s.get("cache_ttl", cx, duration) {
        c.session.cache_ttl = v;
    }
    s.finish(cx);
    if c.session.store == StoreKind::Redis && c.session.redis_url.is_none() {
        cx.err(
            "session.redis_url",
            "required when session.store = \"redis\"",
        );
    }
    if let Some(provider) = c.auth.provider {
        let need = "required when auth.provider is set";
        if c.server.public_url.is_none() {
            cx.err(
                "server.public_url",
                format!("{need} (it builds the OAuth callback URL {{public_url}}/oauth2/callback)"),
            );
        }
        if c.auth.client_id.is_none() {
            cx.err("auth.client_id", need);
        }
        if c.auth.client_secret_file.is_none() && !auth_secret_given {
            cx.err("auth.client_secret_file", need);
        }
        if c.session.cookie_secret_file.is_none() && !cookie_secret_given {
            cx.err(
                "session.cookie_secret_file",
                format!("{need} (generate one with `jacker-gate gen-secret`)"),
            );
        }
        if provider == Provider::Oidc && c.auth.issuer_url.is_none() {
            cx.err("auth.issuer_url", "required when auth.provider = \"oidc\"");
        }
        // The effective value, so that `check-config` prints what the gate will use.
        if provider == Provider::Google && c.auth.issuer_url.is_none() {
            c.auth.issuer_url = Some(Url::parse(GOOGLE_ISSUER_URL).expect("a valid URL"));
        }
        if c.auth.allowed_domains.is_empty() && c.auth.allowed_emails.is_empty() {
            cx.err(
                "auth.allowed_domains",
                "allowed_domains and allowed_emails are both empty: nobody could sign in",
            );
        }
    }

    let mut s = Section::take(root, "log", cx);
    if let Some(v) = s.get("format", cx, |v, e| match string(v, e)?.as_str() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(format!("expected \"json\" or \"text\", found {other:?}")),
    }) {
        c.log.format = v;
    }
    if let Some(v) = s.get("level", cx, |v, e| {
        let t = string(v, e)?;
        // The filter parser panics on some non-ASCII input; a level is ASCII anyway.
        if !t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(format!("not a log level or filter: {t:?}"));
        }
        tracing_subscriber::EnvFilter::try_new(&t)
            .map_err(|e| format!("not a log level or filter: {e}"))?;
        Ok(t)
    }) {
        c.log.level = v;
    }
    s.finish(cx);

    match root.remove("rules") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(rule) = build_rule(i, item, c.auth.provider.is_some(), cx) {
                    c.rules.push(rule);
                }
            }
        }
        Some(_) => cx.err("rules", "must be an array of tables ([[rules]])"),
    }

    for key in root.keys() {
        cx.err(key, "unknown section");
    }
    c
}

fn build_rule(i: usize, item: Value, auth_on: bool, cx: &mut Cx<'_>) -> Option<Rule> {
    let name = format!("rules[{i}]");
    let Value::Table(table) = item else {
        cx.err(&name, "must be a table");
        return None;
    };
    let mut s = Section { name, table };
    let errors_before = cx.errors.len();
    let host = s.get("host", cx, |v, e| HostPattern::parse(&string(v, e)?));
    let path_prefix = s.get("path_prefix", cx, |v, e| PathPrefix::parse(&string(v, e)?));
    let methods = s
        .get("methods", cx, |v, e| {
            let list = string_list(v, e)?;
            for m in &list {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("not an HTTP method: {m:?}"));
                }
            }
            Ok(list.iter().map(|m| m.to_ascii_uppercase()).collect())
        })
        .unwrap_or_default();
    let policy = s.get("policy", cx, |v, e| match string(v, e)?.as_str() {
        "public" => Ok(Policy::Public),
        "login" => Ok(Policy::Login),
        "deny" => Ok(Policy::Deny),
        other => Err(format!(
            "expected \"public\", \"login\" or \"deny\", found {other:?}"
        )),
    });
    let key = s.key("policy");
    let had_policy = policy.is_some();
    s.finish(cx);
    if !had_policy && cx.errors.len() == errors_before {
        cx.err(&key, "required: \"public\", \"login\" or \"deny\"");
    }
    if policy == Some(Policy::Login) && !auth_on {
        cx.err(&key, "\"login\" needs an [auth] provider");
    }
    if cx.errors.len() != errors_before {
        return None;
    }
    Some(Rule {
        host,
        path_prefix,
        methods,
        policy: policy?,
    })
}

impl Config {
    /// Settings that are valid but probably not what the operator meant. `check-config` prints
    /// them and `run` logs them at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let loopback_only = self
            .server
            .trusted_proxies
            .iter()
            .all(|n| n.addr().is_loopback());
        if self.server.listen.ip().is_unspecified() && loopback_only {
            out.push(
                "server.trusted_proxies: only loopback is trusted while the gate listens on every \
                 interface; requests from Traefik will be judged on Traefik's own address and \
                 path (add Traefik's address or the traefik_proxy subnet)"
                    .to_owned(),
            );
        }
        if self
            .server
            .trusted_proxies
            .iter()
            .any(|n| n.prefix_len() == 0)
        {
            out.push(
                "server.trusted_proxies: a /0 network trusts every client to name its own \
                 address and route"
                    .to_owned(),
            );
        }
        if self
            .crowdsec
            .lapi_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "http")
            && self
                .crowdsec
                .lapi_url
                .as_ref()
                .and_then(|u| u.host_str())
                .is_some_and(|h| h != "localhost" && !h.starts_with("127."))
        {
            out.push(
                "crowdsec.lapi_url: plain http sends the bouncer key in clear text; fine on a \
                 private Docker network, not across hosts"
                    .to_owned(),
            );
        }
        out
    }

    /// The effective config as TOML that [`parse`] reads back as the same config. Secret files
    /// appear by path; unset optional keys are left out.
    pub fn to_toml(&self) -> String {
        fn s(v: impl Into<String>) -> Value {
            Value::String(v.into())
        }
        fn list<T: ToString>(items: &[T]) -> Value {
            Value::Array(items.iter().map(|i| s(i.to_string())).collect())
        }
        fn dur(d: Duration) -> Value {
            s(format_human(d))
        }
        fn opt_path(t: &mut toml::Table, key: &str, p: Option<&Path>) {
            if let Some(p) = p {
                t.insert(key.to_owned(), s(p.display().to_string()));
            }
        }
        let mut root = toml::Table::new();

        let mut t = toml::Table::new();
        t.insert("listen".into(), s(self.server.listen.to_string()));
        if let Some(u) = &self.server.public_url {
            t.insert("public_url".into(), s(u.as_str()));
        }
        t.insert("trusted_proxies".into(), list(&self.server.trusted_proxies));
        t.insert(
            "max_header_bytes".into(),
            Value::Integer(self.server.max_header_bytes as i64),
        );
        t.insert(
            "header_read_timeout".into(),
            dur(self.server.header_read_timeout),
        );
        t.insert(
            "max_connections".into(),
            Value::Integer(self.server.max_connections as i64),
        );
        t.insert(
            "worker_threads".into(),
            Value::Integer(self.server.worker_threads as i64),
        );
        opt_path(
            &mut t,
            "tls_cert_file",
            self.server.tls_cert_file.as_deref(),
        );
        opt_path(&mut t, "tls_key_file", self.server.tls_key_file.as_deref());
        opt_path(
            &mut t,
            "tls_client_ca_file",
            self.server.tls_client_ca_file.as_deref(),
        );
        root.insert("server".into(), Value::Table(t));

        let cs = &self.crowdsec;
        let mut t = toml::Table::new();
        if let Some(u) = &cs.lapi_url {
            t.insert("lapi_url".into(), s(u.as_str()));
        }
        opt_path(
            &mut t,
            "api_key_file",
            cs.api_key_file.as_ref().map(|f| f.path.as_path()),
        );
        t.insert(
            "mode".into(),
            s(match cs.mode {
                CrowdsecMode::Stream => "stream",
                CrowdsecMode::Live => "live",
            }),
        );
        t.insert("update_interval".into(), dur(cs.update_interval));
        t.insert("resync_interval".into(), dur(cs.resync_interval));
        t.insert("fail_closed".into(), Value::Boolean(cs.fail_closed));
        t.insert("max_staleness".into(), dur(cs.max_staleness));
        t.insert("timeout".into(), dur(cs.timeout));
        t.insert("live_timeout".into(), dur(cs.live_timeout));
        opt_path(&mut t, "ca_file", cs.ca_file.as_deref());
        opt_path(&mut t, "cert_file", cs.cert_file.as_deref());
        opt_path(&mut t, "key_file", cs.key_file.as_deref());
        root.insert("crowdsec".into(), Value::Table(t));

        let rl = &self.rate_limit;
        let mut t = toml::Table::new();
        t.insert("per_second".into(), Value::Integer(rl.per_second.into()));
        t.insert("burst".into(), Value::Integer(rl.burst.into()));
        t.insert(
            "key".into(),
            s(match rl.key {
                RateKeyKind::Ip => "ip",
                RateKeyKind::User => "user",
            }),
        );
        t.insert("ipv6_prefix".into(), Value::Integer(rl.ipv6_prefix.into()));
        t.insert("exempt".into(), list(&rl.exempt));
        root.insert("rate_limit".into(), Value::Table(t));

        let a = &self.auth;
        let mut t = toml::Table::new();
        if let Some(p) = a.provider {
            t.insert(
                "provider".into(),
                s(match p {
                    Provider::Google => "google",
                    Provider::Oidc => "oidc",
                }),
            );
        }
        if let Some(u) = &a.issuer_url {
            t.insert("issuer_url".into(), s(u.as_str()));
        }
        if let Some(id) = &a.client_id {
            t.insert("client_id".into(), s(id.clone()));
        }
        opt_path(
            &mut t,
            "client_secret_file",
            a.client_secret_file.as_ref().map(|f| f.path.as_path()),
        );
        t.insert("allowed_domains".into(), list(&a.allowed_domains));
        t.insert("allowed_emails".into(), list(&a.allowed_emails));
        t.insert("redirect_domains".into(), list(&a.redirect_domains));
        root.insert("auth".into(), Value::Table(t));

        let se = &self.session;
        let mut t = toml::Table::new();
        t.insert(
            "store".into(),
            s(match se.store {
                StoreKind::Memory => "memory",
                StoreKind::Redis => "redis",
            }),
        );
        if let Some(u) = &se.redis_url {
            t.insert("redis_url".into(), s(u.clone()));
        }
        opt_path(
            &mut t,
            "redis_password_file",
            se.redis_password_file.as_ref().map(|f| f.path.as_path()),
        );
        t.insert("cookie_name".into(), s(se.cookie_name.clone()));
        t.insert("cookie_domains".into(), list(&se.cookie_domains));
        opt_path(
            &mut t,
            "cookie_secret_file",
            se.cookie_secret_file.as_ref().map(|f| f.path.as_path()),
        );
        t.insert("cookie_secure".into(), Value::Boolean(se.cookie_secure));
        t.insert("lifetime".into(), dur(se.lifetime));
        t.insert("cache_ttl".into(), dur(se.cache_ttl));
        root.insert("session".into(), Value::Table(t));

        let mut t = toml::Table::new();
        t.insert(
            "format".into(),
            s(match self.log.format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }),
        );
        t.insert("level".into(), s(self.log.level.clone()));
        root.insert("log".into(), Value::Table(t));

        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut t = toml::Table::new();
                if let Some(h) = &r.host {
                    t.insert("host".into(), s(h.to_string()));
                }
                if let Some(p) = &r.path_prefix {
                    t.insert("path_prefix".into(), s(p.raw()));
                }
                t.insert("methods".into(), list(&r.methods));
                t.insert("policy".into(), s(r.policy.as_str()));
                Value::Table(t)
            })
            .collect();
        if !self.rules.is_empty() {
            root.insert("rules".into(), Value::Array(rules));
        }

        toml::to_string_pretty(&root).expect("a toml::Table always serialises")
    }
}

#[cfg(test)]
mod tests;
