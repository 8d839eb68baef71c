//! Login test plumbing shared by the `login`, `proxies`, `browser`, `faults` and `traefik` tests: the
//! install hint for the login peers, a gate config with `[auth]` and `[session]` pointing at the
//! test provider, and the walk of one login through gate and provider redirects.

use std::path::{Path, PathBuf};

use url::Url;

use super::gate::Gate;
use super::oidc::OidcProvider;
use super::web::{Browser, Response};

/// What installs the login peers (Node packages, Chromium, Caddy, nginx, Redis).
pub(crate) const INSTALL: &str = "bash tests/support/install-login-peers.sh";

/// The gate's default session cookie name (`session.cookie_name`).
pub(crate) const COOKIE_NAME: &str = "_jacker_gate";

/// base64 of 32 bytes: the cookie secret every test gate uses (two replicas must share it).
pub(crate) const COOKIE_SECRET: &str = "Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtb2Ytc2VjcmV0IQ==";

/// Finds `name` in `~/.cache/jacker-gate/bin` (where the install script links a Node.js 20 or
/// later when the system's is older), then on `PATH`, or fails naming the install script.
pub(crate) fn require_login_binary(name: &str) -> PathBuf {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(home.join(".cache/jacker-gate/bin"))
        .chain(std::env::split_paths(&path))
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed; the login tests need real peers: run `{INSTALL}`")
        })
}

/// Checks that `npm ci` ran in `dir` (a folder under tests/support/), or fails naming the install
/// script.
pub(crate) fn require_node_package(dir: &Path, package: &str) {
    let manifest = dir.join("node_modules").join(package).join("package.json");
    assert!(
        manifest.is_file(),
        "npm package `{package}` is not installed in {}; run `{INSTALL}`",
        dir.display()
    );
}

/// Where sessions live.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    Memory,
    /// A `redis://`, `redis+sentinel://` or `redis+cluster://` URL.
    Redis(String),
}

/// A gate with login: `LoginGate::new(&provider, port).allowed_domains(..).start()`. The port is
/// chosen before the provider starts, since the provider must know the redirect URI
/// `{public_url}/oauth2/callback`.
#[derive(Clone, Debug)]
pub(crate) struct LoginGate {
    port: u16,
    provider: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    public_url: String,
    allowed_domains: Vec<String>,
    allowed_emails: Vec<String>,
    redirect_domains: Vec<String>,
    store: Store,
    cookie_domains: Vec<String>,
    cache_ttl: Option<String>,
    lifetime: Option<String>,
    server: String,
    rate_limit: Option<(u32, u32)>,
    rate_limit_store: Option<String>,
    log_to: Option<PathBuf>,
    extra: String,
    redis_password: Option<String>,
    env: Vec<(String, String)>,
}

impl LoginGate {
    /// `provider = "oidc"` at `idp`, public URL `http://127.0.0.1:{port}`, `allowed_domains =
    /// ["example.com"]`, memory store, host-only cookie, `cookie_secure = false`, rate limit off,
    /// every route `login`.
    pub(crate) fn new(idp: &OidcProvider, port: u16) -> LoginGate {
        LoginGate {
            port,
            provider: "oidc".to_owned(),
            issuer: idp.issuer().to_owned(),
            client_id: idp.client_id().to_owned(),
            client_secret: idp.client_secret().to_owned(),
            public_url: format!("http://127.0.0.1:{port}"),
            allowed_domains: vec!["example.com".to_owned()],
            allowed_emails: Vec::new(),
            redirect_domains: vec![format!("127.0.0.1:{port}")],
            store: Store::Memory,
            cookie_domains: Vec::new(),
            cache_ttl: None,
            lifetime: None,
            server: String::new(),
            rate_limit: None,
            rate_limit_store: None,
            log_to: None,
            extra: String::new(),
            redis_password: None,
            env: Vec::new(),
        }
    }

    /// `"oidc"` or `"google"` (adds the `hd` check).
    pub(crate) fn provider(mut self, kind: &str) -> LoginGate {
        self.provider = kind.to_owned();
        self
    }

    pub(crate) fn client_secret(mut self, secret: &str) -> LoginGate {
        self.client_secret = secret.to_owned();
        self
    }

    pub(crate) fn public_url(mut self, url: &str) -> LoginGate {
        self.public_url = url.to_owned();
        self
    }

    pub(crate) fn allowed_domains(mut self, domains: &[&str]) -> LoginGate {
        self.allowed_domains = domains.iter().map(|d| (*d).to_owned()).collect();
        self
    }

    pub(crate) fn allowed_emails(mut self, emails: &[&str]) -> LoginGate {
        self.allowed_emails = emails.iter().map(|d| (*d).to_owned()).collect();
        self
    }

    pub(crate) fn redirect_domains(mut self, domains: &[&str]) -> LoginGate {
        self.redirect_domains = domains.iter().map(|d| (*d).to_owned()).collect();
        self
    }

    pub(crate) fn store(mut self, store: Store) -> LoginGate {
        self.store = store;
        self
    }

    pub(crate) fn cookie_domains(mut self, domains: &[&str]) -> LoginGate {
        self.cookie_domains = domains.iter().map(|d| (*d).to_owned()).collect();
        self
    }

    pub(crate) fn cache_ttl(mut self, ttl: &str) -> LoginGate {
        self.cache_ttl = Some(ttl.to_owned());
        self
    }

    pub(crate) fn lifetime(mut self, lifetime: &str) -> LoginGate {
        self.lifetime = Some(lifetime.to_owned());
        self
    }

    /// Lines added to `[server]` as they are (e.g. `trusted_proxies = [...]`), replacing the
    /// lines given before.
    pub(crate) fn server(mut self, lines: &str) -> LoginGate {
        self.server = format!("{lines}\n");
        self
    }

    /// `rate_limit.per_second` and `burst` (off unless set).
    pub(crate) fn rate_limit(mut self, per_second: u32, burst: u32) -> LoginGate {
        self.rate_limit = Some((per_second, burst));
        self
    }

    /// `rate_limit.store` (`"redis"`: the shared limit, on the session's Redis).
    pub(crate) fn rate_limit_store(mut self, store: &str) -> LoginGate {
        self.rate_limit_store = Some(store.to_owned());
        self
    }

    /// Also appends the gate's log lines to `path` (see `GateSetup::log_to`).
    pub(crate) fn log_to(mut self, path: &Path) -> LoginGate {
        self.log_to = Some(path.to_owned());
        self
    }

    /// TOML appended as it is (e.g. `[[rules]]`).
    pub(crate) fn extra(mut self, toml: &str) -> LoginGate {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The password the gate gives Redis, read from a secret file (`session.redis_password_file`).
    pub(crate) fn redis_password(mut self, password: &str) -> LoginGate {
        self.redis_password = Some(password.to_owned());
        self
    }

    /// An environment variable for the gate process, e.g. a `JACKER_GATE_*` override as a
    /// compose file sets it.
    pub(crate) fn env(mut self, key: &str, value: &str) -> LoginGate {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The gate's config, with `client_secret_file` and `cookie_secret_file` under `dir`.
    pub(crate) fn toml(&self, dir: &Path) -> String {
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut session = match &self.store {
            Store::Memory => "store = \"memory\"\n".to_owned(),
            Store::Redis(url) => format!("store = \"redis\"\nredis_url = {url:?}\n"),
        };
        if self.redis_password.is_some() {
            let file = dir.join("redis_password").display().to_string();
            session.push_str(&format!("redis_password_file = {file:?}\n"));
        }
        if let Some(ttl) = &self.cache_ttl {
            session.push_str(&format!("cache_ttl = {ttl:?}\n"));
        }
        if let Some(lifetime) = &self.lifetime {
            session.push_str(&format!("lifetime = {lifetime:?}\n"));
        }
        format!(
            r#"[server]
public_url = {public_url:?}
{server}
[rate_limit]
{rate_limit}

[auth]
provider = {provider:?}
issuer_url = {issuer:?}
client_id = {client_id:?}
client_secret_file = {client_secret_file:?}
allowed_domains = {allowed_domains}
allowed_emails = {allowed_emails}
redirect_domains = {redirect_domains}

[session]
{session}cookie_secret_file = {cookie_secret_file:?}
cookie_secure = false
cookie_domains = {cookie_domains}

{extra}"#,
            public_url = self.public_url,
            server = self.server,
            rate_limit = match self.rate_limit {
                Some((per_second, burst)) => format!(
                    "per_second = {per_second}\nburst = {burst}\n{}",
                    self.rate_limit_store
                        .as_ref()
                        .map(|s| format!("store = {s:?}"))
                        .unwrap_or_default()
                ),
                None => "per_second = 0".to_owned(),
            },
            provider = self.provider,
            issuer = self.issuer,
            client_id = self.client_id,
            client_secret_file = dir.join("client_secret").display().to_string(),
            allowed_domains = list(&self.allowed_domains),
            allowed_emails = list(&self.allowed_emails),
            redirect_domains = list(&self.redirect_domains),
            cookie_secret_file = dir.join("cookie_secret").display().to_string(),
            cookie_domains = list(&self.cookie_domains),
            extra = self.extra,
        )
    }

    /// Writes the secrets and the config and starts the gate on its port; waits for `/healthz`.
    pub(crate) fn start(self) -> Gate {
        let mut setup = Gate::setup().port(self.port);
        for (key, value) in &self.env {
            setup = setup.env(key, value);
        }
        if let Some(path) = &self.log_to {
            setup = setup.log_to(path);
        }
        setup.write_secret("client_secret", &self.client_secret);
        setup.write_secret("cookie_secret", COOKIE_SECRET);
        if let Some(password) = &self.redis_password {
            setup.write_secret("redis_password", password);
        }
        let toml = self.toml(setup.dir());
        // The gate is ready only once it serves on this port (see `Gate`), not on a port taken
        // by another process.
        setup.start(&toml)
    }

    /// The redirect URI the gate sends to the provider.
    pub(crate) fn callback_url(&self) -> String {
        format!("{}/oauth2/callback", self.public_url.trim_end_matches('/'))
    }
}

/// One login walked from the response that started it to the provider's redirect back to the
/// gate's callback (not yet followed).
pub(crate) struct LoginWalk {
    /// Every response on the way (the starting one first).
    pub(crate) chain: Vec<Response>,
    /// The authorization request the gate sent the browser to (before `login_hint` was added).
    pub(crate) authorize: Url,
    /// `.../oauth2/callback?code=..&state=..&iss=..`
    pub(crate) callback: Url,
}

impl LoginWalk {
    /// A query parameter of the callback URL.
    pub(crate) fn callback_param(&self, name: &str) -> Option<String> {
        query_param(&self.callback, name)
    }

    /// A query parameter of the authorization request.
    pub(crate) fn authorize_param(&self, name: &str) -> Option<String> {
        query_param(&self.authorize, name)
    }
}

pub(crate) fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Follows `start` (a redirect that begins a login: from `/auth`, `/oauth2/start`, a proxy) as
/// `browser`, through the gate's own redirects and the provider's, logging in as `user` (added
/// as `login_hint` to the authorization request), and stops at the redirect to an
/// `/oauth2/callback` URL. Panics, with every hop, when the walk ends anywhere else.
pub(crate) async fn walk_to_callback(
    browser: &Browser,
    idp: &OidcProvider,
    start: Response,
    user: &str,
) -> LoginWalk {
    let mut chain = vec![start];
    let mut authorize = None;
    for _ in 0..12 {
        let last = chain.last().expect("chain");
        let Some(next) = last.is_redirect().then(|| last.location()).flatten() else {
            break;
        };
        if !idp.is_own(&next) && next.path().ends_with("/oauth2/callback") {
            let Some(authorize) = authorize else {
                panic!(
                    "reached a callback without passing the provider:\n{}",
                    trail(&chain)
                )
            };
            return LoginWalk {
                chain,
                authorize,
                callback: next,
            };
        }
        if !idp.is_own(&last.url) {
            let raw = last.location_raw().unwrap_or_default();
            assert!(
                Url::parse(raw).is_ok(),
                "every Location the gate sends is absolute, got {raw:?}: {}",
                last.describe()
            );
        }
        let next = if idp.is_authorize_url(&next) {
            authorize = Some(next.clone());
            OidcProvider::with_login_hint(&next, user)
        } else {
            next
        };
        let response = browser.navigate(next.as_str()).await;
        chain.push(response);
    }
    panic!(
        "the login as {user} did not come back to an /oauth2/callback:\n{}\nprovider log:\n{}",
        trail(&chain),
        idp.log()
    );
}

/// The whole login as `user`, starting from a browser navigation to `original` behind the gate's
/// `/auth`: the gate's redirect, the provider, and the callback (followed). Returns the walk and
/// the gate's answer to the callback.
pub(crate) async fn log_in(
    browser: &Browser,
    gate: &Gate,
    idp: &OidcProvider,
    original: &str,
    user: &str,
) -> (LoginWalk, Response) {
    let first = browser
        .forward_auth(&format!("{}/auth", gate.url()), "GET", original, true, &[])
        .await;
    assert_eq!(
        first.status,
        302,
        "a browser navigation without a session must be sent to log in: {}\ngate logs:\n{}",
        first.describe(),
        gate.logs()
    );
    let walk = walk_to_callback(browser, idp, first, user).await;
    let answer = browser.navigate(walk.callback.as_str()).await;
    (walk, answer)
}

/// Each response of a chain on its own line.
pub(crate) fn trail(chain: &[Response]) -> String {
    chain
        .iter()
        .map(Response::describe)
        .collect::<Vec<_>>()
        .join("\n")
}
