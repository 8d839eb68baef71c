//! A real OpenID provider standing in for Google: npm `oidc-provider` run by
//! `tests/support/oidc/provider.mjs` on a 127.0.0.1 port it picks itself (it binds port 0 and
//! prints the port, unless a test gives one), with one confidential client, RS256
//! keys kept in its temporary directory (so a restart keeps them) and the test users below, chosen
//! by `login_hint` (else the default user, `alice@example.com` unless changed). The interaction is
//! finished in-process, so a login through it is only redirects.
//!
//! It is as strict as Google: PKCE is required, and a wrong `code_verifier`, secret or
//! `redirect_uri`, or a replayed code, fail. `stop`/`start_again` take it down and bring it back on
//! the same port; `set_jwks` makes its JWKS publish a key other than the one it signs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::blocking_get;
use super::login::{require_login_binary, require_node_package};
use super::peer::Peer;

/// Verified, `hd=example.com`: the user who gets in.
pub(crate) const ALICE: &str = "alice@example.com";
/// `email_verified: false`, `hd=example.com`.
pub(crate) const BOB: &str = "bob@example.com";
/// Verified, but of a domain that is not allowed (`hd=evil.com`).
pub(crate) const MALLORY: &str = "mallory@evil.com";
/// Verified, a consumer account: no `hd` claim at all.
pub(crate) const CAROL: &str = "carol@gmail.com";
/// Verified, an allowed domain in the address but `hd=other.com`.
pub(crate) const DAVE: &str = "dave@example.com";
/// A second allowed user (verified, `hd=example.com`), for tests that need two sessions.
pub(crate) const ERIN: &str = "erin@example.com";

/// The client the gate is registered as, unless a test picks another.
pub(crate) const CLIENT_ID: &str = "jacker-gate";
pub(crate) const CLIENT_SECRET: &str = "test-client-secret-5f1c0a";

/// Node starts the provider in about half a second; this only bounds a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the provider's `/jwks` publishes. Tokens are always signed with its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Jwks {
    /// The signing key: tokens verify.
    Own,
    /// Another RSA key under the signing key's `kid`: the signature does not verify.
    ForeignSameKid,
    /// Another RSA key under another `kid`: the token's `kid` is unknown.
    ForeignOtherKid,
}

impl Jwks {
    fn mode(self) -> &'static str {
        match self {
            Jwks::Own => "own",
            Jwks::ForeignSameKid => "foreign_same_kid",
            Jwks::ForeignOtherKid => "foreign_other_kid",
        }
    }
}

/// How to start the provider: `OidcProvider::setup().redirect_uri(..).start()`.
pub(crate) struct OidcSetup {
    port: Option<u16>,
    issuer: Option<String>,
    client_id: String,
    client_secret: String,
    redirect_uris: Vec<String>,
    jwks: Jwks,
    default_user: String,
    auth_method: String,
}

impl OidcSetup {
    /// Listen on this port (default: one the provider picks).
    pub(crate) fn port(mut self, port: u16) -> OidcSetup {
        self.port = Some(port);
        self
    }

    /// The issuer URL; `{port}` is replaced by the provider's port. Default
    /// `http://127.0.0.1:{port}`. The provider always listens on 127.0.0.1, so another host name
    /// only resolves where the resolver is told (the browser's `--host-resolver-rules`).
    pub(crate) fn issuer(mut self, issuer: &str) -> OidcSetup {
        self.issuer = Some(issuer.to_owned());
        self
    }

    pub(crate) fn client(mut self, id: &str, secret: &str) -> OidcSetup {
        self.client_id = id.to_owned();
        self.client_secret = secret.to_owned();
        self
    }

    /// Adds an allowed redirect URI (exact match, as Google's).
    pub(crate) fn redirect_uri(mut self, uri: &str) -> OidcSetup {
        self.redirect_uris.push(uri.to_owned());
        self
    }

    /// What `/jwks` publishes from the start (before the gate first fetches it).
    pub(crate) fn jwks(mut self, jwks: Jwks) -> OidcSetup {
        self.jwks = jwks;
        self
    }

    /// The user logged in when the authorization request has no `login_hint`.
    pub(crate) fn default_user(mut self, email: &str) -> OidcSetup {
        self.default_user = email.to_owned();
        self
    }

    /// The client's token endpoint authentication: `client_secret_basic` (default) or
    /// `client_secret_post`.
    pub(crate) fn token_auth_method(mut self, method: &str) -> OidcSetup {
        self.auth_method = method.to_owned();
        self
    }

    pub(crate) fn start(self) -> OidcProvider {
        assert!(
            !self.redirect_uris.is_empty(),
            "the provider needs at least one redirect URI"
        );
        let node = require_login_binary("node");
        let script_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc");
        require_node_package(&script_dir, "oidc-provider");
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-oidc-")
            .tempdir()
            .expect("create provider temp dir");
        let issuer = self
            .issuer
            .unwrap_or_else(|| "http://127.0.0.1:{port}".to_owned());
        let mut provider = OidcProvider {
            peer: Peer::new("OpenID provider"),
            dir,
            port: self.port.unwrap_or(0),
            issuer_template: issuer,
            issuer: String::new(),
            client_id: self.client_id,
            client_secret: self.client_secret,
            redirect_uris: self.redirect_uris,
            jwks: self.jwks,
            default_user: self.default_user,
            auth_method: self.auth_method,
            node,
            script: script_dir.join("provider.mjs"),
        };
        provider.spawn();
        provider
    }
}

pub(crate) struct OidcProvider {
    /// First, so that the process is stopped before its directory is removed.
    peer: Peer,
    dir: TempDir,
    /// 0 until it first serves; then the port it keeps across restarts.
    port: u16,
    /// The issuer as configured, `{port}` standing for the port.
    issuer_template: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uris: Vec<String>,
    jwks: Jwks,
    default_user: String,
    auth_method: String,
    node: PathBuf,
    script: PathBuf,
}

impl OidcProvider {
    pub(crate) fn setup() -> OidcSetup {
        OidcSetup {
            port: None,
            issuer: None,
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            redirect_uris: Vec::new(),
            jwks: Jwks::Own,
            default_user: ALICE.to_owned(),
            auth_method: "client_secret_basic".to_owned(),
        }
    }

    /// The issuer URL (what the gate's `auth.issuer_url` names).
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `http://127.0.0.1:PORT`, where it really listens.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn client_secret(&self) -> &str {
        &self.client_secret
    }

    pub(crate) fn redirect_uris(&self) -> &[String] {
        &self.redirect_uris
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// Everything the provider wrote (start-up line, errors it saw, e.g. `grant.error ...`).
    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// True when `url` is the provider's authorization endpoint (`/auth`, not `/auth/UID`).
    pub(crate) fn is_authorize_url(&self, url: &url::Url) -> bool {
        self.is_own(url) && url.path() == "/auth"
    }

    /// True when `url` is on the provider (its issuer's origin or its real address).
    pub(crate) fn is_own(&self, url: &url::Url) -> bool {
        let origin = url.origin().ascii_serialization();
        let issuer = url::Url::parse(&self.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        origin == issuer || origin == self.url()
    }

    /// `url` with `login_hint=user` (replacing any there was).
    pub(crate) fn with_login_hint(url: &url::Url, user: &str) -> url::Url {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "login_hint")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut url = url.clone();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(pairs)
            .append_pair("login_hint", user);
        url
    }

    /// Makes `/jwks` publish `jwks` from now on.
    pub(crate) fn set_jwks(&self, jwks: Jwks) {
        self.control(&format!("/__test/jwks?mode={}", jwks.mode()));
    }

    /// The user logged in from now on when there is no `login_hint`.
    pub(crate) fn set_default_user(&self, email: &str) {
        self.control(&format!("/__test/default_user?email={email}"));
    }

    /// The provider's fault settings and counters: `{"jwks", "defaultUser", "logins": [emails],
    /// "tokenRequests"}` (counters restart with the process).
    pub(crate) fn state(&self) -> serde_json::Value {
        let (status, body) = blocking_get(self.addr(), "/__test/state", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("provider state: {e}\n{}", self.log()));
        assert_eq!(status, 200, "provider state: {body}");
        serde_json::from_str(&body).expect("provider state is JSON")
    }

    /// Kills the provider (by PID): its port refuses connections until `start_again`.
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    /// Starts it again on the same port with the same keys and client. Codes, sessions and
    /// counters it held are gone; the JWKS mode is the one it was started with.
    pub(crate) fn start_again(&mut self) {
        self.spawn();
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel but never answered.
    pub(crate) fn pause(&self) {
        self.peer.pause();
    }

    pub(crate) fn resume(&self) {
        self.peer.resume();
    }

    fn control(&self, path_and_query: &str) {
        let (status, body) = post(self.addr(), path_and_query)
            .unwrap_or_else(|e| panic!("provider control {path_and_query}: {e}\n{}", self.log()));
        assert_eq!(status, 200, "provider control {path_and_query}: {body}");
    }

    /// Writes its config (port 0 the first time: it picks one) and starts it; learns its port
    /// and issuer from the line it prints once it serves, and waits until discovery answers.
    fn spawn(&mut self) {
        let config = serde_json::json!({
            "port": self.port,
            "issuer": self.issuer_template,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "dir": self.dir.path(),
            "jwks_mode": self.jwks.mode(),
            "default_user": self.default_user,
            "token_endpoint_auth_method": self.auth_method,
        });
        let config_path = self.dir.path().join("provider.json");
        std::fs::write(&config_path, config.to_string()).expect("write provider config");
        let mut command = Command::new(&self.node);
        command
            .arg(&self.script)
            .arg(&config_path)
            .current_dir(self.dir.path())
            .env("NODE_ENV", "test");
        self.peer.spawn(command);
        let (port, issuer) = self.peer.ready(START_TIMEOUT, |peer| {
            let (port, issuer) = listening(&peer.run_logs()).ok_or("no \"listening\" line yet")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match blocking_get(
                addr,
                "/.well-known/openid-configuration",
                Duration::from_secs(1),
            ) {
                Ok((200, _)) => Ok((port, issuer)),
                seen => Err(format!("discovery on {addr}: {seen:?}")),
            }
        });
        self.port = port;
        self.issuer = issuer;
    }
}

/// The port and issuer from the provider's `listening on 127.0.0.1:PORT as ISSUER` line.
fn listening(logs: &str) -> Option<(u16, String)> {
    let line = logs.lines().find(|l| l.contains(" listening on "))?;
    let (_, rest) = line.split_once("listening on 127.0.0.1:")?;
    let (port, issuer) = rest.split_once(" as ")?;
    Some((port.parse().ok()?, issuer.trim().to_owned()))
}

/// A bodiless `POST` over HTTP/1.0 (the provider's test controls).
fn post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    super::blocking_request(addr, "POST", path, Duration::from_secs(5))
}
