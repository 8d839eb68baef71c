//! The login (README: `[auth]`, `[session]`, `/oauth2/*`, decision step 5) against a real OpenID
//! provider standing in for Google (npm `oidc-provider`, tests/support/oidc) and a real Redis.
//! The client here is a scripted browser (tests/support/web.rs) that keeps cookies and walks each
//! redirect itself, so every hop can be checked or tampered with.
//!
//! The first tests pin the provider itself (discovery, a whole PKCE code flow, its strictness,
//! the claims of each test user, its fault switches), so that a change of `oidc-provider` shows
//! up there rather than as a puzzling gate failure. Peers: `bash tests/support/install-login-peers.sh`.

use crate::support;
use std::time::{Duration, Instant};

use crate::support::gate::Gate;
use crate::support::login::{
    log_in, query_param, trail, walk_to_callback, LoginGate, LoginWalk, Store, COOKIE_NAME,
};
use crate::support::oidc::{Jwks, OidcProvider, ALICE, BOB, CAROL, DAVE, ERIN, MALLORY};
use crate::support::redis::Redis;
use crate::support::reserve_port;
use crate::support::web::{Browser, Response, NAVIGATION_ACCEPT};
use crate::support::{eventually, metric_sum};
use base64::Engine as _;
use serde_json::Value;

/// RFC 7636 appendix B: a verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const APP_CALLBACK: &str = "http://127.0.0.1:9/oauth2/callback";

// ---------------------------------------------------------------------------------------------
// The provider on its own (no gate).

fn provider_for(redirect_uri: &str) -> OidcProvider {
    OidcProvider::setup().redirect_uri(redirect_uri).start()
}

async fn json_get(url: &str) -> (u16, Value) {
    let response = Browser::new().get(url, &[]).await;
    let body = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, body)
}

/// The authorization request a relying party would send, with PKCE S256.
fn authorize_url(idp: &OidcProvider, redirect_uri: &str, state: &str, user: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/auth", idp.url())).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", idp.client_id())
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .append_pair("nonce", &format!("nonce-{state}"))
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256")
        .append_pair("login_hint", user);
    url.to_string()
}

/// Walks the provider's redirects from an authorization request to the redirect back to the
/// client; returns that URL.
async fn provider_code(browser: &Browser, idp: &OidcProvider, user: &str, state: &str) -> url::Url {
    let first = browser
        .navigate(&authorize_url(idp, APP_CALLBACK, state, user))
        .await;
    let (chain, stopped) = browser.follow(first, 10, |url| !idp.is_own(url)).await;
    stopped.unwrap_or_else(|| {
        panic!(
            "the provider did not redirect back:\n{}\n{}",
            trail(&chain),
            idp.log()
        )
    })
}

async fn token_request(
    idp: &OidcProvider,
    code: &str,
    verifier: &str,
    secret: &str,
    redirect_uri: &str,
) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_verifier", verifier)
        .finish();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", idp.client_id()));
    let response = Browser::new()
        .send(
            reqwest::Method::POST,
            &format!("{}/token", idp.url()),
            &[
                ("Authorization", &format!("Basic {basic}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(body),
        )
        .await;
    let json = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

/// The claims of a JWT (not verified: the provider is ours).
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("JSON JWT part")
}

#[tokio::test]
async fn provider_discovery_is_what_the_gate_reads() {
    let idp = provider_for(APP_CALLBACK);
    let (status, discovery) =
        json_get(&format!("{}/.well-known/openid-configuration", idp.url())).await;
    assert_eq!(status, 200, "{discovery}");
    assert_eq!(discovery["issuer"], idp.issuer());
    assert_eq!(idp.issuer(), idp.url());
    for (key, path) in [
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
    ] {
        assert_eq!(
            discovery[key],
            format!("{}{path}", idp.url()),
            "{key}: {discovery}"
        );
    }
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        true
    );
    let claims = discovery["claims_supported"].to_string();
    for claim in ["email", "email_verified", "hd"] {
        assert!(claims.contains(&format!("\"{claim}\"")), "{claims}");
    }
    let (status, jwks) = json_get(&format!("{}/jwks", idp.url())).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["kid"], "test-signing-key");
    assert!(
        jwks["keys"][0]["d"].is_null(),
        "the JWKS leaks the private key"
    );
}

/// A whole authorization code flow with PKCE against the provider alone, and the strictness the
/// gate's tests rely on: wrong verifier, wrong secret, wrong redirect URI and a replayed code all
/// fail, as at Google.
#[tokio::test]
async fn provider_code_flow_with_pkce_is_strict() {
    let idp = provider_for(APP_CALLBACK);
    let browser = Browser::new();

    let back = provider_code(&browser, &idp, ALICE, "s1").await;
    assert_eq!(back.path(), "/oauth2/callback");
    assert_eq!(query_param(&back, "state").as_deref(), Some("s1"));
    assert_eq!(query_param(&back, "iss").as_deref(), Some(idp.issuer()));
    let code = query_param(&back, "code").expect("code");

    let (status, error) = token_request(
        &idp,
        &code,
        &VERIFIER.replace('d', "e"),
        idp.client_secret(),
        APP_CALLBACK,
    )
    .await;
    assert_eq!(
        (status, &error["error"]),
        (400, &Value::from("invalid_grant")),
        "{error}"
    );

    // A rejected verifier burns the code; every other check gets a fresh one.
    let code =
        query_param(&provider_code(&browser, &idp, ALICE, "s2").await, "code").expect("code");
    let (status, error) = token_request(&idp, &code, VERIFIER, "wrong-secret", APP_CALLBACK).await;
    assert_eq!(
        (status, &error["error"]),
        (401, &Value::from("invalid_client")),
        "{error}"
    );

    let code =
        query_param(&provider_code(&browser, &idp, ALICE, "s3").await, "code").expect("code");
    let (status, error) = token_request(
        &idp,
        &code,
        VERIFIER,
        idp.client_secret(),
        "http://127.0.0.1:9/other",
    )
    .await;
    assert_eq!(
        (status, &error["error"]),
        (400, &Value::from("invalid_grant")),
        "{error}"
    );

    let code =
        query_param(&provider_code(&browser, &idp, ALICE, "s4").await, "code").expect("code");
    let (status, tokens) =
        token_request(&idp, &code, VERIFIER, idp.client_secret(), APP_CALLBACK).await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let header = jwt_part(id_token, 0);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "test-signing-key");
    let claims = jwt_part(id_token, 1);
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], idp.client_id());
    assert_eq!(claims["nonce"], "nonce-s4");
    assert_eq!(claims["email"], ALICE);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["hd"], "example.com");
    assert!(claims["sub"]
        .as_str()
        .is_some_and(|s| s.chars().all(|c| c.is_ascii_digit())));

    let (status, error) =
        token_request(&idp, &code, VERIFIER, idp.client_secret(), APP_CALLBACK).await;
    assert_eq!(
        (status, &error["error"]),
        (400, &Value::from("invalid_grant")),
        "replay: {error}"
    );

    // An unregistered redirect URI is never redirected to.
    let response = Browser::new()
        .navigate(&authorize_url(&idp, "http://127.0.0.1:9/evil", "s5", ALICE))
        .await;
    assert_eq!(response.status, 400, "{}", response.describe());
    assert!(
        response.body.contains("redirect_uri"),
        "{}",
        response.describe()
    );
}

/// The test users carry the claims the gate's checks are about.
#[tokio::test]
async fn provider_users_carry_googles_claims() {
    let idp = provider_for(APP_CALLBACK);
    for (user, verified, hd) in [
        (ALICE, true, Some("example.com")),
        (BOB, false, Some("example.com")),
        (MALLORY, true, Some("evil.com")),
        (CAROL, true, None),
        (DAVE, true, Some("other.com")),
        (ERIN, true, Some("example.com")),
    ] {
        // One browser per user: the provider keeps its own session cookie.
        let browser = Browser::new();
        let code =
            query_param(&provider_code(&browser, &idp, user, "s").await, "code").expect("code");
        let (status, tokens) =
            token_request(&idp, &code, VERIFIER, idp.client_secret(), APP_CALLBACK).await;
        assert_eq!(status, 200, "{user}: {tokens}");
        let claims = jwt_part(tokens["id_token"].as_str().expect("id_token"), 1);
        assert_eq!(claims["email"], user, "{claims}");
        assert_eq!(claims["email_verified"], verified, "{user}: {claims}");
        assert_eq!(claims["hd"].as_str(), hd, "{user}: {claims}");
    }
    let state = idp.state();
    assert_eq!(state["logins"].as_array().map(Vec::len), Some(6), "{state}");
}

/// The fault switches: what `/jwks` publishes, and a provider that is down and comes back with
/// the same key.
#[tokio::test]
async fn provider_faults_foreign_keys_and_outage() {
    let mut idp = provider_for(APP_CALLBACK);
    let (_, own) = json_get(&format!("{}/jwks", idp.url())).await;

    idp.set_jwks(Jwks::ForeignSameKid);
    let (_, same_kid) = json_get(&format!("{}/jwks", idp.url())).await;
    assert_eq!(same_kid["keys"][0]["kid"], own["keys"][0]["kid"]);
    assert_ne!(same_kid["keys"][0]["n"], own["keys"][0]["n"]);

    idp.set_jwks(Jwks::ForeignOtherKid);
    let (_, other_kid) = json_get(&format!("{}/jwks", idp.url())).await;
    assert_ne!(other_kid["keys"][0]["kid"], own["keys"][0]["kid"]);
    assert_eq!(other_kid["keys"][0]["n"], same_kid["keys"][0]["n"]);

    // Tokens are still signed with the real key.
    let browser = Browser::new();
    let code = query_param(&provider_code(&browser, &idp, ALICE, "f").await, "code").expect("code");
    let (_, tokens) = token_request(&idp, &code, VERIFIER, idp.client_secret(), APP_CALLBACK).await;
    assert_eq!(
        jwt_part(tokens["id_token"].as_str().expect("id_token"), 0)["kid"],
        own["keys"][0]["kid"]
    );

    idp.stop();
    assert!(
        std::net::TcpStream::connect(idp.addr()).is_err(),
        "a stopped provider still accepts connections"
    );
    idp.start_again();
    let (status, again) = json_get(&format!("{}/jwks", idp.url())).await;
    assert_eq!(status, 200);
    assert_eq!(again, own, "the provider came back with another key");
}

// ---------------------------------------------------------------------------------------------
// The gate's login against the provider.

/// Provider, gate and the app URL the "proxy" asks about (nothing listens there: the test plays
/// the proxy with `Browser::forward_auth`).
struct Env {
    idp: OidcProvider,
    gate: Gate,
    /// `http://127.0.0.1:APP_PORT`, in `redirect_domains`.
    app: String,
}

impl Env {
    fn context(&self) -> String {
        format!(
            "\ngate logs:\n{}\nprovider log:\n{}",
            self.gate.logs(),
            self.idp.log()
        )
    }

    fn auth(&self) -> String {
        format!("{}/auth", self.gate.url())
    }

    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.app)
    }

    /// `/auth` for `original` as an API call (no `Accept: text/html`), with the browser's cookies.
    async fn api(&self, browser: &Browser, original: &str) -> Response {
        browser
            .forward_auth(&self.auth(), "GET", original, false, &[])
            .await
    }

    /// `/auth` for `original` with exactly this session cookie value and nothing else.
    async fn api_with_cookie(&self, value: &str, original: &str) -> Response {
        let cookie = format!("{COOKIE_NAME}={value}");
        Browser::new()
            .forward_auth(&self.auth(), "GET", original, false, &[("Cookie", &cookie)])
            .await
    }

    async fn logins(&self, result: &str) -> f64 {
        let metrics = self.gate.metrics().await;
        metric_sum(&metrics, "jacker_gate_logins_total", &[("result", result)]).unwrap_or(0.0)
    }
}

fn env(store: Store, tweak: impl FnOnce(LoginGate) -> LoginGate) -> Env {
    let gate_port = reserve_port();
    let app_port = reserve_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    let config = LoginGate::new(&idp, gate_port)
        .store(store)
        .redirect_domains(&[
            &format!("127.0.0.1:{app_port}"),
            &format!("127.0.0.1:{gate_port}"),
        ]);
    let gate = tweak(config).start();
    Env {
        idp,
        gate,
        app: format!("http://127.0.0.1:{app_port}"),
    }
}

fn session_value(browser: &Browser) -> Option<String> {
    browser.cookie(COOKIE_NAME).map(|c| c.value)
}

/// Asserts the three identity headers of a 200 are `email`.
fn assert_identity(response: &Response, email: &str) {
    assert_eq!(response.status, 200, "{}", response.describe());
    for header in [
        "x-auth-request-email",
        "x-auth-request-user",
        "x-forwarded-user",
    ] {
        assert_eq!(
            response.header_all(header),
            vec![email.to_owned()],
            "{header}: {}",
            response.describe()
        );
    }
}

/// A callback that must not log anyone in: an error status and no session cookie.
fn assert_refused(answer: &Response, what: &str, context: &str) {
    assert!(
        (400..500).contains(&answer.status),
        "{what}: expected a 4xx at the callback, got {}{context}",
        answer.describe()
    );
    assert!(
        answer
            .set_cookie(COOKIE_NAME)
            .is_none_or(|c| c.value.is_empty() || c.expires.is_some_and(|e| e <= 0)),
        "{what}: the callback set a session cookie: {}",
        answer.describe()
    );
}

/// Starts a login at `/auth` for `original` and walks it to the callback (not followed).
async fn start_login(e: &Env, browser: &Browser, original: &str, user: &str) -> LoginWalk {
    let first = browser
        .forward_auth(&e.auth(), "GET", original, true, &[])
        .await;
    assert_eq!(first.status, 302, "{}{}", first.describe(), e.context());
    walk_to_callback(browser, &e.idp, first, user).await
}

/// `callback` with `name` set to `value` (or removed when `None`).
fn with_param(callback: &url::Url, name: &str, value: Option<&str>) -> url::Url {
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = callback.clone();
    {
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(pairs);
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    url
}

async fn happy_path(store: Store) {
    let e = env(store, |g| g);
    let browser = Browser::new();
    let original = e.page("/app/page?tab=2");

    // Without a session: an API call gets 401, a navigation is sent to log in.
    let api = e.api(&browser, &original).await;
    assert_eq!(api.status, 401, "{}{}", api.describe(), e.context());
    for (name, value) in [("X-Requested-With", "XMLHttpRequest")] {
        let xhr = browser
            .forward_auth(&e.auth(), "GET", &original, true, &[(name, value)])
            .await;
        assert_eq!(
            xhr.status,
            401,
            "an XHR is not a navigation: {}",
            xhr.describe()
        );
    }
    let post = browser
        .forward_auth(&e.auth(), "POST", &original, true, &[])
        .await;
    assert_eq!(
        post.status,
        401,
        "a POST is not a navigation: {}",
        post.describe()
    );
    let nginx = browser
        .forward_auth(
            &format!("{}/auth-request", e.gate.url()),
            "GET",
            &original,
            true,
            &[],
        )
        .await;
    assert_eq!(
        nginx.status,
        401,
        "/auth-request never 302s: {}",
        nginx.describe()
    );
    let login_url = nginx
        .location_raw()
        .unwrap_or_else(|| panic!("/auth-request gives the login URL: {}", nginx.describe()));
    assert!(
        url::Url::parse(login_url).is_ok(),
        "every Location is absolute: {login_url}"
    );

    let (walk, answer) = log_in(&browser, &e.gate, &e.idp, &original, ALICE).await;

    // The authorization request: code flow, PKCE S256, fresh state and nonce, our redirect URI.
    assert_eq!(
        walk.authorize_param("response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        walk.authorize_param("client_id").as_deref(),
        Some(e.idp.client_id())
    );
    assert_eq!(
        walk.authorize_param("redirect_uri"),
        Some(format!("{}/oauth2/callback", e.gate.url()))
    );
    assert_eq!(
        walk.authorize_param("code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(
        walk.authorize_param("code_challenge")
            .is_some_and(|c| c.len() == 43),
        "{}",
        walk.authorize
    );
    let scope = walk.authorize_param("scope").unwrap_or_default();
    assert!(
        scope.split(' ').any(|s| s == "openid") && scope.split(' ').any(|s| s == "email"),
        "{scope}"
    );
    for param in ["state", "nonce"] {
        assert!(
            walk.authorize_param(param).is_some_and(|v| v.len() >= 16),
            "{param} must be long and random: {}",
            walk.authorize
        );
    }
    assert!(walk.callback_param("iss").is_some(), "{}", walk.callback);

    // The callback: back to the page that started it, with a session cookie as README says.
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    assert_eq!(
        answer.location().map(String::from).as_deref(),
        Some(original.as_str()),
        "{}",
        answer.describe()
    );
    let cookie = answer
        .set_cookie(COOKIE_NAME)
        .unwrap_or_else(|| panic!("no {COOKIE_NAME} cookie: {}", answer.describe()));
    assert!(cookie.http_only, "{}", cookie.raw);
    assert!(!cookie.secure, "cookie_secure = false: {}", cookie.raw);
    assert!(
        cookie
            .same_site
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("lax")),
        "{}",
        cookie.raw
    );
    assert!(
        cookie.host_only,
        "no cookie_domains: a host-only cookie: {}",
        cookie.raw
    );
    assert_eq!(cookie.path, "/", "{}", cookie.raw);
    let lifetime = cookie.expires.map(|at| at - unix_now());
    assert!(
        lifetime.is_some_and(|s| (7 * 86_400 - 60..=7 * 86_400).contains(&s)),
        "Max-Age is the 7d lifetime: {}",
        cookie.raw
    );

    // With the session: 200 and identity headers, on /auth and /auth-request.
    assert_identity(&e.api(&browser, &original).await, ALICE);
    let nav = browser
        .forward_auth(&e.auth(), "GET", &e.page("/other"), true, &[])
        .await;
    assert_identity(&nav, ALICE);
    let nginx = browser
        .forward_auth(
            &format!("{}/auth-request", e.gate.url()),
            "GET",
            &original,
            true,
            &[],
        )
        .await;
    assert_identity(&nginx, ALICE);

    let info = browser
        .get(&format!("{}/oauth2/userinfo", e.gate.url()), &[])
        .await;
    assert_eq!(info.status, 200, "{}", info.describe());
    assert_eq!(
        info.json(),
        serde_json::json!({"email": ALICE, "user": ALICE})
    );
    let anonymous = Browser::new()
        .get(&format!("{}/oauth2/userinfo", e.gate.url()), &[])
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());

    let home = browser.navigate(&format!("{}/", e.gate.url())).await;
    assert_eq!(home.status, 200, "{}", home.describe());
    assert!(
        home.body.contains(ALICE),
        "/ shows who is signed in: {}",
        home.describe()
    );
    assert!(
        home.body.contains("/oauth2/sign_out"),
        "{}",
        home.describe()
    );
    let home = Browser::new().navigate(&format!("{}/", e.gate.url())).await;
    assert_eq!(home.status, 200, "{}", home.describe());
    assert!(!home.body.contains(ALICE), "{}", home.describe());
    assert!(
        home.body.contains("/oauth2/start"),
        "/ offers to sign in: {}",
        home.describe()
    );

    assert_eq!(e.logins("success").await, 1.0);

    // A fresh session id at every login.
    let first = session_value(&browser).expect("session");
    let again = browser
        .navigate(&format!(
            "{}/oauth2/start?rd={}",
            e.gate.url(),
            url::form_urlencoded::byte_serialize(original.as_bytes()).collect::<String>()
        ))
        .await;
    let walk = walk_to_callback(&browser, &e.idp, again, ALICE).await;
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(answer.status, 302, "{}", answer.describe());
    let second = session_value(&browser).expect("session");
    assert_ne!(first, second, "a login must get a new session id");
    assert_identity(&e.api(&browser, &original).await, ALICE);
    assert_eq!(e.logins("success").await, 2.0);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn login_happy_path_memory_store() {
    happy_path(Store::Memory).await;
}

#[tokio::test]
async fn login_happy_path_redis_store_keeps_no_provider_tokens() {
    let redis = Redis::start();
    happy_path(Store::Redis(redis.url())).await;
    let keys = redis.cli(&["--scan"]);
    assert!(
        !keys.trim().is_empty(),
        "the redis store holds no key after two logins"
    );
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let kind = redis.cli(&["TYPE", key]);
        let value = match kind.trim() {
            "string" => redis.cli(&["GET", key]),
            "hash" => redis.cli(&["HGETALL", key]),
            "set" => redis.cli(&["SMEMBERS", key]),
            "list" => redis.cli(&["LRANGE", key, "0", "-1"]),
            "zset" => redis.cli(&["ZRANGE", key, "0", "-1"]),
            _ => String::new(),
        };
        assert!(
            !value.contains("eyJhbGciOiJSUzI1Ni") && !key.contains("eyJhbGciOiJSUzI1Ni"),
            "an ID token is stored in Redis under {key}: {value}"
        );
        let ttl: i64 = redis.cli(&["TTL", key]).trim().parse().unwrap_or(-2);
        assert!(ttl > 0, "Redis key {key} has no expiry (TTL {ttl})");
    }
}

/// Who may enter: verified, allowed domain (and for `google` the matching `hd`), or listed.
#[tokio::test]
async fn accounts_that_are_not_allowed_end_at_the_callback_with_403() {
    // oidc provider: no hd check; dave@example.com (hd=other.com) passes, mallory and bob do not.
    let e = env(Store::Memory, |g| g);
    for (user, allowed, result) in [
        (MALLORY, false, "denied_email"),
        (BOB, false, "unverified"),
        (CAROL, false, "denied_email"),
        (DAVE, true, "success"),
    ] {
        let browser = Browser::new();
        let before = e.logins(result).await;
        let (_, answer) = log_in(&browser, &e.gate, &e.idp, &e.page("/x"), user).await;
        if allowed {
            assert_eq!(
                answer.status,
                302,
                "oidc {user}: {}{}",
                answer.describe(),
                e.context()
            );
            assert_identity(&e.api(&browser, &e.page("/x")).await, user);
        } else {
            assert_eq!(
                answer.status,
                403,
                "oidc {user}: {}{}",
                answer.describe(),
                e.context()
            );
            assert!(
                session_value(&browser).is_none(),
                "oidc {user}: a session cookie"
            );
            let again = e.api(&browser, &e.page("/x")).await;
            assert_eq!(again.status, 401, "oidc {user}: {}", again.describe());
        }
        assert_eq!(
            e.logins(result).await,
            before + 1.0,
            "oidc {user}: logins_total{{result={result}}}"
        );
    }

    // google provider: hd must equal the allowed domain; allowed_emails admits one address.
    let e = env(Store::Memory, |g| {
        g.provider("google")
            .allowed_domains(&["example.com", "gmail.com"])
            .allowed_emails(&[])
    });
    for (user, allowed) in [
        (ALICE, true),
        (DAVE, false),
        (CAROL, false),
        (MALLORY, false),
        (BOB, false),
    ] {
        let browser = Browser::new();
        let (_, answer) = log_in(&browser, &e.gate, &e.idp, &e.page("/x"), user).await;
        let want = if allowed { 302 } else { 403 };
        assert_eq!(
            answer.status,
            want,
            "google {user}: {}{}",
            answer.describe(),
            e.context()
        );
        assert_eq!(session_value(&browser).is_some(), allowed, "google {user}");
    }
    let e = env(Store::Memory, |g| {
        g.provider("google")
            .allowed_domains(&["example.com"])
            .allowed_emails(&[CAROL])
    });
    for (user, allowed) in [
        (CAROL, true),
        (MALLORY, false),
        (DAVE, false),
        (ALICE, true),
    ] {
        let browser = Browser::new();
        let (_, answer) = log_in(&browser, &e.gate, &e.idp, &e.page("/x"), user).await;
        let want = if allowed { 302 } else { 403 };
        assert_eq!(
            answer.status,
            want,
            "google + allowed_emails {user}: {}{}",
            answer.describe(),
            e.context()
        );
        if allowed {
            assert_identity(&e.api(&browser, &e.page("/x")).await, user);
        }
    }
}

/// `state` bound to the browser: bad, missing and replayed state, missing and foreign binding
/// cookie all end without a session; several logins at once in one browser all finish.
#[tokio::test]
async fn state_and_binding_cookie_are_checked() {
    let e = env(Store::Memory, |g| g);
    let original = e.page("/s");

    let browser = Browser::new();
    let walk = start_login(&e, &browser, &original, ALICE).await;
    let invalid_before = e.logins("invalid_state").await;
    for (what, url) in [
        (
            "a made-up state",
            with_param(
                &walk.callback,
                "state",
                Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ),
        ),
        ("no state", with_param(&walk.callback, "state", None)),
        (
            "an empty state",
            with_param(&walk.callback, "state", Some("")),
        ),
    ] {
        let answer = browser.navigate(url.as_str()).await;
        assert_refused(&answer, what, &e.context());
    }
    assert!(
        e.logins("invalid_state").await >= invalid_before + 3.0,
        "logins_total{{result=invalid_state}} counts them"
    );
    assert!(session_value(&browser).is_none());

    // Missing binding cookie: the callback arrives from a browser that did not start the login.
    let walk = start_login(&e, &browser, &original, ALICE).await;
    let stranger = Browser::new();
    assert_refused(
        &stranger.navigate(walk.callback.as_str()).await,
        "a callback without the login cookie",
        &e.context(),
    );
    // Foreign binding cookie: another browser, with its own login under way, delivers this
    // browser's callback.
    let other = Browser::new();
    let _ = start_login(&e, &other, &original, ERIN).await;
    assert_refused(
        &other.navigate(walk.callback.as_str()).await,
        "a callback with another browser's login cookie",
        &e.context(),
    );
    assert!(session_value(&other).is_none());
    // Neither used up the attempt: the browser that started it still finishes it.
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    browser.remove_cookies(|c| c.name == COOKIE_NAME);

    // The browser that started a login finishes it, once; a replay is refused.
    let walk = start_login(&e, &browser, &original, ALICE).await;
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    assert_identity(&e.api(&browser, &original).await, ALICE);
    let replayed = browser.fork();
    replayed.remove_cookies(|c| c.name == COOKIE_NAME);
    assert_refused(
        &replayed.navigate(walk.callback.as_str()).await,
        "a replayed callback",
        &e.context(),
    );

    // Several tabs: five logins started in one browser, finished last-first, all succeed, and
    // the browser does not collect one cookie per attempt.
    let tabs = Browser::new();
    let mut walks = Vec::new();
    for tab in 0..5 {
        walks.push(start_login(&e, &tabs, &e.page(&format!("/tab/{tab}")), ALICE).await);
    }
    let gate_cookies = tabs
        .cookies()
        .iter()
        .filter(|c| {
            walks
                .iter()
                .flat_map(|w| w.chain.iter())
                .any(|r| !e.idp.is_own(&r.url) && r.set_cookie(&c.name).is_some())
        })
        .count();
    assert!(
        gate_cookies <= 2,
        "five logins at once left {gate_cookies} gate cookies: {:?}",
        tabs.cookies()
    );
    for (tab, walk) in walks.iter().enumerate().rev() {
        let answer = tabs.navigate(walk.callback.as_str()).await;
        assert_eq!(
            answer.status,
            302,
            "tab {tab}: {}{}",
            answer.describe(),
            e.context()
        );
        assert_eq!(
            answer.location().map(String::from),
            Some(e.page(&format!("/tab/{tab}"))),
            "tab {tab} returns to its own page"
        );
    }
    assert_identity(&e.api(&tabs, &original).await, ALICE);
}

/// The session cookie: tampered, expired and signed-out cookies are refused; the same for both
/// stores.
async fn session_cookie_faults(store: Store) {
    let e = env(store.clone(), |g| g.lifetime("3s").cache_ttl("1s"));
    let original = e.page("/c");
    let browser = Browser::new();
    let (_, answer) = log_in(&browser, &e.gate, &e.idp, &original, ALICE).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    let value = session_value(&browser).expect("session cookie");
    assert_identity(&e.api_with_cookie(&value, &original).await, ALICE);

    // Tampered: any changed character, a truncated value, garbage.
    let mut tampered = Vec::new();
    for index in [0, value.len() / 2, value.len() - 1] {
        let mut bytes = value.clone().into_bytes();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        tampered.push(String::from_utf8(bytes).expect("ascii cookie"));
    }
    tampered.push(value[..value.len() - 4].to_owned());
    tampered.push("garbage".to_owned());
    tampered.push(String::new());
    for bad in &tampered {
        let answer = e.api_with_cookie(bad, &original).await;
        assert_eq!(
            answer.status,
            401,
            "{store:?} tampered {bad:?}: {}",
            answer.describe()
        );
        assert!(answer.header("x-auth-request-email").is_none());
    }

    // Expired: the lifetime is 3 s; the gate must refuse it on its own (the cookie is sent
    // anyway, as a client that ignores Max-Age would).
    let started = Instant::now();
    eventually(
        Duration::from_secs(6),
        "the 3 s session to expire",
        async || {
            let answer = e.api_with_cookie(&value, &original).await;
            match answer.status {
                401 => Ok(()),
                _ => Err(answer.describe()),
            }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{store:?}: refused before its lifetime was over"
    );

    // Signed out: the cookie is cleared and the old value refused within 1 s.
    let browser = Browser::new();
    let e2 = env(store.clone(), |g| g);
    let (_, answer) = log_in(
        &browser,
        &e2.gate,
        &e2.idp,
        &original.replace(&e.app, &e2.app),
        ALICE,
    )
    .await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e2.context());
    let value = session_value(&browser).expect("session cookie");
    let page = e2.page("/c");
    assert_identity(&e2.api_with_cookie(&value, &page).await, ALICE);
    let out = browser
        .navigate(&format!(
            "{}/oauth2/sign_out?rd={}",
            e2.gate.url(),
            url::form_urlencoded::byte_serialize(e2.page("/bye").as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(out.status, 302, "{}", out.describe());
    assert_eq!(
        out.location().map(String::from),
        Some(e2.page("/bye")),
        "{}",
        out.describe()
    );
    let cleared = out
        .set_cookie(COOKIE_NAME)
        .unwrap_or_else(|| panic!("sign-out must clear the cookie: {}", out.describe()));
    assert!(
        cleared.expires.is_some_and(|at| at <= unix_now()),
        "{}",
        cleared.raw
    );
    assert!(session_value(&browser).is_none());
    let signed_out = Instant::now();
    eventually(
        Duration::from_secs(1),
        "the signed-out session to be refused",
        async || {
            let answer = e2.api_with_cookie(&value, &page).await;
            match answer.status {
                401 => Ok(()),
                _ => Err(answer.describe()),
            }
        },
    )
    .await;
    assert!(signed_out.elapsed() < Duration::from_millis(1500));

    // A sign-out to a foreign rd never goes there; POST works too.
    for rd in [
        "https://evil.com/",
        "//evil.com/",
        "/\\evil.com",
        "javascript:alert(1)",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let out = Browser::new()
            .navigate(&format!("{}/oauth2/sign_out?rd={encoded}", e2.gate.url()))
            .await;
        assert!(
            out.status == 200
                || out
                    .location()
                    .is_some_and(|l| l.host_str() == Some("127.0.0.1")),
            "sign-out rd={rd:?}: {}",
            out.describe()
        );
    }
    let post = Browser::new()
        .request(
            reqwest::Method::POST,
            &format!("{}/oauth2/sign_out", e2.gate.url()),
            &[],
            None,
        )
        .await;
    assert!(
        post.status == 200 || post.status == 302,
        "{}",
        post.describe()
    );
}

#[tokio::test]
async fn session_cookie_faults_memory_store() {
    let _exclusive = support::exclusive().await;
    session_cookie_faults(Store::Memory).await;
}

#[tokio::test]
async fn session_cookie_faults_redis_store() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    session_cookie_faults(Store::Redis(redis.url())).await;
}

/// Two gate processes sharing one Redis: a login started at one finishes at the other; the
/// session passes both; a sign-out at one is refused by the other within 1 s.
#[tokio::test]
async fn two_replicas_share_logins_and_sign_out_through_redis() {
    let _exclusive = support::exclusive().await;
    let redis = Redis::start();
    let (port_a, port_b, app_port) = (reserve_port(), reserve_port(), reserve_port());
    // Both replicas behind one public URL (A's), as behind a load balancer.
    let public = format!("http://127.0.0.1:{port_a}");
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("{public}/oauth2/callback"))
        .start();
    let replica = |port| {
        LoginGate::new(&idp, port)
            .public_url(&public)
            .store(Store::Redis(redis.url()))
            .cache_ttl("30s")
            .redirect_domains(&[
                &format!("127.0.0.1:{app_port}"),
                &format!("127.0.0.1:{port_a}"),
            ])
            .start()
    };
    let (a, b) = (replica(port_a), replica(port_b));
    let page = format!("http://127.0.0.1:{app_port}/shared");
    let context = || {
        format!(
            "\ngate A:\n{}\ngate B:\n{}\nprovider:\n{}",
            a.logs(),
            b.logs(),
            idp.log()
        )
    };

    // Started at B, finished at A.
    let browser = Browser::new();
    let first = browser
        .forward_auth(&format!("{}/auth", b.url()), "GET", &page, true, &[])
        .await;
    assert_eq!(first.status, 302, "{}{}", first.describe(), context());
    let walk = walk_to_callback(&browser, &idp, first, ALICE).await;
    assert!(walk
        .callback
        .as_str()
        .starts_with(&format!("{public}/oauth2/callback")));
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(
        answer.status,
        302,
        "A finishes B's login: {}{}",
        answer.describe(),
        context()
    );
    let value = session_value(&browser).expect("session");

    let ask = |gate: &Gate| {
        let cookie = format!("{COOKIE_NAME}={value}");
        let url = format!("{}/auth", gate.url());
        let page = page.clone();
        async move {
            Browser::new()
                .forward_auth(&url, "GET", &page, false, &[("Cookie", &cookie)])
                .await
        }
    };
    assert_identity(&ask(&a).await, ALICE);
    assert_identity(&ask(&b).await, ALICE);

    // Sign out at A; B (which has the session in its 30 s cache) refuses it within 1 s.
    let out = browser
        .navigate(&format!("{}/oauth2/sign_out", a.url()))
        .await;
    assert!(out.status == 200 || out.status == 302, "{}", out.describe());
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(1),
        "replica B to drop the signed-out session",
        async || {
            let answer = ask(&b).await;
            match answer.status {
                401 => Ok(()),
                _ => Err(answer.describe()),
            }
        },
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(ask(&a).await.status, 401);
}

/// A session whose email the config no longer allows is refused with 403 (not 401: it is a
/// known user who may not enter), by a replica that reads the same Redis.
#[tokio::test]
async fn a_session_whose_email_is_no_longer_allowed_gets_403() {
    let redis = Redis::start();
    let e = env(Store::Redis(redis.url()), |g| g);
    let browser = Browser::new();
    let original = e.page("/moved");
    let (_, answer) = log_in(&browser, &e.gate, &e.idp, &original, ALICE).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    let value = session_value(&browser).expect("session");

    let stricter = LoginGate::new(&e.idp, reserve_port())
        .public_url(&e.gate.url())
        .store(Store::Redis(redis.url()))
        .allowed_domains(&["other.com"])
        .start();
    let cookie = format!("{COOKIE_NAME}={value}");
    let answer = Browser::new()
        .forward_auth(
            &format!("{}/auth", stricter.url()),
            "GET",
            &original,
            true,
            &[("Cookie", &cookie)],
        )
        .await;
    assert_eq!(
        answer.status,
        403,
        "{}\n{}",
        answer.describe(),
        stricter.logs()
    );
    assert!(answer.header("x-auth-request-email").is_none());
    // The replica that still allows it lets it in.
    assert_identity(&e.api_with_cookie(&value, &original).await, ALICE);
}

/// Redis down: routes needing a login answer 503 (never 2xx), public routes still pass, the
/// store errors are counted, readiness drops, and all recovers without a restart.
#[tokio::test]
async fn redis_outage_answers_503_and_recovers() {
    let _exclusive = support::exclusive().await;
    let mut redis = Redis::start();
    let e = env(Store::Redis(redis.url()), |g| {
        g.cache_ttl("1s").extra(
            r#"
[[rules]]
path_prefix = "/public"
policy = "public"
"#,
        )
    });
    let browser = Browser::new();
    let original = e.page("/r");
    let (_, answer) = log_in(&browser, &e.gate, &e.idp, &original, ALICE).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    let value = session_value(&browser).expect("session");
    assert_identity(&e.api_with_cookie(&value, &original).await, ALICE);

    // Frozen: requests to Redis hang; the gate's own timeout answers.
    redis.pause();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let answer = e.api_with_cookie(&value, &original).await;
    redis.resume();
    assert_eq!(
        answer.status,
        503,
        "Redis frozen: {}{}",
        answer.describe(),
        e.context()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "the session to pass again after Redis thawed",
        async || {
            let answer = e.api_with_cookie(&value, &original).await;
            (answer.status == 200)
                .then_some(())
                .ok_or_else(|| answer.describe())
        },
    )
    .await;

    // Gone: 503 for login routes, 200 for public ones, /readyz 503, errors counted.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = e.api_with_cookie(&value, &original).await;
    assert_eq!(
        answer.status,
        503,
        "Redis down: {}{}",
        answer.describe(),
        e.context()
    );
    let nav = browser
        .forward_auth(&e.auth(), "GET", &original, true, &[])
        .await;
    assert!(
        !(200..300).contains(&nav.status),
        "never 2xx while the store is down: {}",
        nav.describe()
    );
    let public = e.api(&Browser::new(), &e.page("/public/x")).await;
    assert_eq!(
        public.status,
        200,
        "public routes need no store: {}",
        public.describe()
    );
    let ready = e.gate.get("/readyz", &[]).await;
    assert_eq!(ready.0, 503, "readiness follows the store: {}", ready.2);
    let metrics = e.gate.metrics().await;
    assert!(
        metric_sum(&metrics, "jacker_gate_session_store_errors_total", &[])
            .is_some_and(|n| n > 0.0),
        "{metrics}"
    );

    // Back (empty): the old session is unknown (401, not 503), and a new login works.
    redis.start_again();
    eventually(
        Duration::from_secs(10),
        "the gate to reconnect to Redis",
        async || {
            let answer = e.api_with_cookie(&value, &original).await;
            (answer.status == 401)
                .then_some(())
                .ok_or_else(|| answer.describe())
        },
    )
    .await;
    let fresh = Browser::new();
    let (_, answer) = log_in(&fresh, &e.gate, &e.idp, &original, ALICE).await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    assert_identity(&e.api(&fresh, &original).await, ALICE);
    assert_eq!(e.gate.get("/readyz", &[]).await.0, 200);
}

/// The provider down: at the callback (token exchange fails) → an error page, not a 2xx, and
/// no session; at gate start → the gate still starts, and logins work once it is back.
#[tokio::test]
async fn provider_down_is_an_error_page_and_recovers() {
    let mut e = env(Store::Memory, |g| g);
    let browser = Browser::new();
    let original = e.page("/p");
    let walk = start_login(&e, &browser, &original, ALICE).await;
    e.idp.stop();
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert!(
        answer.status >= 400,
        "token exchange against a down provider: {}{}",
        answer.describe(),
        e.context()
    );
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
            && answer.body.to_ascii_lowercase().contains("provider"),
        "a clear error page that names the provider: {}",
        answer.describe()
    );
    assert!(session_value(&browser).is_none());
    assert!(e.logins("provider_error").await >= 1.0);
    // While it is down, a navigation still never gets a 2xx.
    let nav = Browser::new()
        .forward_auth(&e.auth(), "GET", &original, true, &[])
        .await;
    assert!(!(200..300).contains(&nav.status), "{}", nav.describe());

    e.idp.start_again();
    let (_, answer) = log_in(&Browser::new(), &e.gate, &e.idp, &original, ALICE).await;
    assert_eq!(
        answer.status,
        302,
        "after the provider came back: {}{}",
        answer.describe(),
        e.context()
    );

    // A gate started while the provider is down starts, refuses, and recovers.
    let gate_port = reserve_port();
    let mut idp = OidcProvider::setup()
        .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
        .start();
    idp.stop();
    let gate = LoginGate::new(&idp, gate_port).start();
    let page = format!("{}/x", gate.url());
    let nav = Browser::new()
        .forward_auth(&format!("{}/auth", gate.url()), "GET", &page, true, &[])
        .await;
    assert!(
        !(200..300).contains(&nav.status),
        "{}\n{}",
        nav.describe(),
        gate.logs()
    );
    idp.start_again();
    let browser = Browser::new();
    let answer = eventually(
        Duration::from_secs(10),
        "a login once the provider is up",
        async || {
            browser.clear_cookies();
            let first = browser
                .forward_auth(&format!("{}/auth", gate.url()), "GET", &page, true, &[])
                .await;
            if first.status != 302 {
                return Err(first.describe());
            }
            let walk = walk_to_callback(&browser, &idp, first, ALICE).await;
            let answer = browser.navigate(walk.callback.as_str()).await;
            (answer.status == 302)
                .then_some(answer.clone())
                .ok_or_else(|| answer.describe())
        },
    )
    .await;
    assert!(session_value(&browser).is_some(), "{}", answer.describe());
}

/// ID tokens the provider signs with a key its JWKS does not publish are rejected.
#[tokio::test]
async fn tokens_signed_with_a_foreign_key_are_rejected() {
    for jwks in [Jwks::ForeignOtherKid, Jwks::ForeignSameKid] {
        let gate_port = reserve_port();
        let idp = OidcProvider::setup()
            .redirect_uri(&format!("http://127.0.0.1:{gate_port}/oauth2/callback"))
            .jwks(jwks)
            .start();
        let gate = LoginGate::new(&idp, gate_port).start();
        let browser = Browser::new();
        let (_, answer) = log_in(&browser, &gate, &idp, &format!("{}/k", gate.url()), ALICE).await;
        assert!(
            answer.status >= 400,
            "{jwks:?}: a token that does not verify logged in: {}\n{}",
            answer.describe(),
            gate.logs()
        );
        assert!(session_value(&browser).is_none(), "{jwks:?}");
        let state = idp.state();
        assert!(
            state["tokenRequests"].as_u64().is_some_and(|n| n >= 1),
            "{jwks:?}: the gate never redeemed the code, so the key was not what stopped it: {state}"
        );
    }
}

/// Return URLs: `rd` and the triggering page are followed only inside `redirect_domains`;
/// anything else lands on the public URL.
#[tokio::test]
async fn return_urls_outside_redirect_domains_land_on_the_public_url() {
    let e = env(Store::Memory, |g| g);
    let public = e.gate.url();
    let cases = [
        (e.page("/deep/link?q=1"), Some(e.page("/deep/link?q=1"))),
        (
            "/relative/path".to_owned(),
            Some(format!("{public}/relative/path")),
        ),
        ("https://evil.com/".to_owned(), None),
        ("//evil.com/x".to_owned(), None),
        ("/\\evil.com".to_owned(), None),
        (format!("{}.evil.com/", e.app), None),
        (
            format!("http://127.0.0.1:{}@evil.com/", e.gate.port()),
            None,
        ),
        ("http://127.0.0.1:1/other-port".to_owned(), None),
        ("javascript:alert(1)".to_owned(), None),
    ];
    for (rd, want) in cases {
        let browser = Browser::new();
        let encoded: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        // As the proxy in front of the public URL sends it (the test client is a trusted peer,
        // so the gate reads the scheme and host from X-Forwarded-*).
        let host = format!("127.0.0.1:{}", e.gate.port());
        let uri = format!("/oauth2/start?rd={encoded}");
        let start = browser
            .request(
                reqwest::Method::GET,
                &format!("{public}{uri}"),
                &[
                    ("Accept", NAVIGATION_ACCEPT),
                    ("X-Forwarded-Proto", "http"),
                    ("X-Forwarded-Host", &host),
                    ("X-Forwarded-Method", "GET"),
                    ("X-Forwarded-Uri", &uri),
                    ("X-Forwarded-For", "192.0.2.10"),
                ],
                None,
            )
            .await;
        assert_eq!(start.status, 302, "start rd={rd:?}: {}", start.describe());
        let walk = walk_to_callback(&browser, &e.idp, start, ALICE).await;
        let answer = browser.navigate(walk.callback.as_str()).await;
        assert_eq!(
            answer.status,
            302,
            "rd={rd:?}: {}{}",
            answer.describe(),
            e.context()
        );
        let location = answer.location().expect("Location");
        match want {
            Some(want) => assert_eq!(location.as_str(), want, "rd={rd:?}"),
            None => assert!(
                location.as_str().starts_with(&public) && location.host_str() == Some("127.0.0.1"),
                "rd={rd:?} must land on the public URL, went to {location}"
            ),
        }
        assert!(session_value(&browser).is_some(), "rd={rd:?}");
    }
}

/// The callback also works when it reaches the gate as a ForwardAuth request (`X-Forwarded-Uri:
/// /oauth2/callback?...`), as when the public URL is served through the proxy's auth check.
#[tokio::test]
async fn callback_is_recognised_inside_a_forward_auth_request() {
    let e = env(Store::Memory, |g| g);
    let browser = Browser::new();
    let original = e.page("/fa");
    let walk = start_login(&e, &browser, &original, ALICE).await;
    let answer = browser
        .forward_auth(&e.auth(), "GET", walk.callback.as_str(), true, &[])
        .await;
    assert_eq!(answer.status, 302, "{}{}", answer.describe(), e.context());
    assert_eq!(answer.location().map(String::from), Some(original.clone()));
    assert_identity(&e.api(&browser, &original).await, ALICE);
}

/// The provider refusing (an error instead of a code) ends without a session.
#[tokio::test]
async fn provider_error_response_ends_without_session() {
    let e = env(Store::Memory, |g| g);
    let browser = Browser::new();
    let first = browser
        .forward_auth(&e.auth(), "GET", &e.page("/err"), true, &[])
        .await;
    assert_eq!(first.status, 302, "{}", first.describe());
    // An unknown login_hint makes the provider answer `error=access_denied` to the callback.
    let walk = walk_to_callback(&browser, &e.idp, first, "nobody@example.com").await;
    assert_eq!(
        walk.callback_param("error").as_deref(),
        Some("access_denied"),
        "{}",
        walk.callback
    );
    let answer = browser.navigate(walk.callback.as_str()).await;
    assert!(
        answer.status >= 400 && !answer.body.trim().is_empty(),
        "{}{}",
        answer.describe(),
        e.context()
    );
    assert!(session_value(&browser).is_none());
}

/// The gate's own login pages asked about through `/auth` (the middleware on the gate's router,
/// on the entrypoint, or no gate router): the issue's minimal input starts a login at the
/// provider instead of redirecting to itself, and `/auth-request` gives the same answer as a
/// 401 for nginx.
#[tokio::test]
async fn gate_pages_asked_through_forward_auth_start_the_login_there() {
    let e = env(Store::Memory, |g| g);
    let browser = Browser::new();
    let start = format!(
        "{}/oauth2/start?rd={}",
        e.gate.url(),
        url::form_urlencoded::byte_serialize(e.page("/").as_bytes()).collect::<String>()
    );
    for (endpoint, want) in [
        (e.auth(), 302),
        (format!("{}/auth-request", e.gate.url()), 401),
    ] {
        let answer = browser
            .forward_auth(&endpoint, "GET", &start, true, &[])
            .await;
        assert_eq!(
            answer.status,
            want,
            "{endpoint}: {}{}",
            answer.describe(),
            e.context()
        );
        let location = answer.location().expect("a Location");
        assert!(
            e.idp.is_authorize_url(&location),
            "{endpoint}: the login starts at the provider, not at {location}"
        );
        assert!(answer.set_cookie(&format!("{COOKIE_NAME}_login")).is_some());
    }
}
