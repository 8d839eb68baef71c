//! End to end through real reverse proxies: Caddy 2.6 `forward_auth` (to `/auth`) and nginx 1.22
//! `auth_request` (to `/auth-request`, 401 → `@login` redirect) in front of the gate and a small
//! upstream that echoes the headers it received. A client without a session is sent to log in at
//! the real OpenID provider, comes back, and reaches the upstream with the identity headers;
//! identity headers the client sends itself never reach the upstream.
//! Peers: `bash tests/support/install-login-peers.sh`.

use crate::support::gate::Gate;
use crate::support::login::{trail, walk_to_callback, LoginGate, COOKIE_NAME};
use crate::support::metric_sum;
use crate::support::oidc::{OidcProvider, ALICE, MALLORY};
use crate::support::proxy::{Kind, Proxy, IDENTITY_HEADERS};
use crate::support::reserve_port;
use crate::support::upstream::{echoed, Upstream};
use crate::support::web::{Browser, Response, NAVIGATION_ACCEPT};

/// Headers a client forges to pass for someone else.
const FORGED: [(&str, &str); 3] = [
    ("X-Auth-Request-Email", "boss@example.com"),
    ("X-Auth-Request-User", "boss@example.com"),
    ("X-Forwarded-User", "boss@example.com"),
];

fn start_proxy(kind: Kind, port: u16, gate: &Gate, upstream: &Upstream) -> Proxy {
    match kind {
        Kind::Caddy => Proxy::caddy_forward_auth(port, gate.addr(), upstream.addr()),
        Kind::Nginx => Proxy::nginx_auth_request(port, gate.addr(), upstream.addr()),
    }
}

/// A navigation through the proxy carrying forged identity headers.
async fn forged_navigation(browser: &Browser, url: &str) -> Response {
    let mut headers = vec![("Accept", NAVIGATION_ACCEPT)];
    headers.extend_from_slice(&FORGED);
    browser
        .request(reqwest::Method::GET, url, &headers, None)
        .await
}

// ---------------------------------------------------------------------------------------------
// The proxies with the gate's existing decisions (no login involved).

async fn public_and_deny_through(kind: Kind) {
    let gate = Gate::start(
        r#"
[rate_limit]
per_second = 0

[[rules]]
path_prefix = "/admin"
policy = "deny"
"#,
    );
    let upstream = Upstream::start();
    let proxy = start_proxy(kind, reserve_port(), &gate, &upstream);
    let browser = Browser::new();

    let page = forged_navigation(&browser, &format!("{}/hello/world?q=1", proxy.url())).await;
    assert_eq!(
        page.status,
        200,
        "{kind:?}: {}\nproxy log:\n{}\ngate logs:\n{}",
        page.describe(),
        proxy.log(),
        gate.logs()
    );
    let echo = page.json();
    assert_eq!(echo["uri"], "/hello/world?q=1", "{echo}");
    for header in IDENTITY_HEADERS {
        assert_eq!(
            echoed(&echo, header),
            Vec::<String>::new(),
            "{kind:?}: a forged {header} reached the upstream on a public route: {echo}"
        );
    }

    let before = upstream.requests().len();
    for path in ["/admin", "/admin/users?x=1", "/static/../admin"] {
        let denied = browser.navigate(&format!("{}{path}", proxy.url())).await;
        assert_eq!(denied.status, 403, "{kind:?} {path}: {}", denied.describe());
    }
    assert_eq!(
        upstream.requests().len(),
        before,
        "{kind:?}: a denied request reached the upstream: {:?}",
        upstream.requests()
    );

    // The gate judged the original request (the proxy's X-Forwarded-* headers were read).
    let metrics = gate.metrics().await;
    let forbidden = metric_sum(
        &metrics,
        "jacker_gate_requests_total",
        &[("verdict", "forbidden")],
    );
    assert!(
        forbidden.is_some_and(|n| n >= 3.0),
        "{kind:?}: forbidden verdicts {forbidden:?}\n{metrics}"
    );
}

#[tokio::test]
async fn caddy_passes_public_routes_and_stops_denied_ones() {
    public_and_deny_through(Kind::Caddy).await;
}

#[tokio::test]
async fn nginx_passes_public_routes_and_stops_denied_ones() {
    public_and_deny_through(Kind::Nginx).await;
}

// ---------------------------------------------------------------------------------------------
// Logging in through the proxies.

/// Proxy, provider, upstream and a login gate whose public URL is the proxy's (`/oauth2/*` is
/// routed to the gate there).
struct Stack {
    proxy: Proxy,
    gate: Gate,
    idp: OidcProvider,
    upstream: Upstream,
}

fn stack(kind: Kind) -> Stack {
    let proxy_port = reserve_port();
    let public_url = format!("http://127.0.0.1:{proxy_port}");
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("{public_url}/oauth2/callback"))
        .start();
    let gate = LoginGate::new(&idp, reserve_port())
        .public_url(&public_url)
        .redirect_domains(&[&format!("127.0.0.1:{proxy_port}")])
        .extra(
            r#"
[[rules]]
path_prefix = "/public"
policy = "public"
"#,
        )
        .start();
    let upstream = Upstream::start();
    let proxy = start_proxy(kind, proxy_port, &gate, &upstream);
    Stack {
        proxy,
        gate,
        idp,
        upstream,
    }
}

impl Stack {
    fn context(&self) -> String {
        format!(
            "\nproxy log:\n{}\ngate logs:\n{}\nprovider log:\n{}",
            self.proxy.log(),
            self.gate.logs(),
            self.idp.log()
        )
    }
}

async fn login_through(kind: Kind) {
    let s = stack(kind);
    let browser = Browser::new();
    let original = format!("{}/app/page?tab=2", s.proxy.url());

    // An API call without a session never reaches the upstream.
    let api = browser
        .get(&original, &[("Accept", "application/json")])
        .await;
    assert!(
        api.status == 401 || (kind == Kind::Nginx && api.status == 302),
        "{kind:?}: an API call without a session: {}{}",
        api.describe(),
        s.context()
    );

    // A navigation is sent to log in, and comes back.
    let first = forged_navigation(&browser, &original).await;
    assert_eq!(
        first.status,
        302,
        "{kind:?}: {}{}",
        first.describe(),
        s.context()
    );
    let walk = walk_to_callback(&browser, &s.idp, first, ALICE).await;
    assert!(
        walk.callback
            .as_str()
            .starts_with(&format!("{}/oauth2/callback?", s.proxy.url())),
        "{kind:?}: the provider returned to {} (the redirect URI is the public URL's)",
        walk.callback
    );
    let back = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(
        back.status,
        302,
        "{kind:?}: callback: {}{}",
        back.describe(),
        s.context()
    );
    assert_eq!(
        back.location().map(String::from).as_deref(),
        Some(original.as_str()),
        "{kind:?}: the login must return to the page that started it: {}",
        back.describe()
    );
    assert!(
        browser.cookie(COOKIE_NAME).is_some(),
        "{kind:?}: no session cookie after the callback: {}",
        back.describe()
    );

    let page = forged_navigation(&browser, &original).await;
    assert_eq!(
        page.status,
        200,
        "{kind:?}: {}{}",
        page.describe(),
        s.context()
    );
    let echo = page.json();
    assert_eq!(echo["uri"], "/app/page?tab=2", "{echo}");
    for header in IDENTITY_HEADERS {
        assert_eq!(
            echoed(&echo, header),
            vec![ALICE.to_owned()],
            "{kind:?}: {header} at the upstream must be the gate's alone: {echo}"
        );
    }
    assert!(
        !echo["headers"]["cookie"].is_null(),
        "the app still gets its cookies: {echo}"
    );

    // A public route passes with or without a session, and forged headers never pass with it.
    let anonymous = Browser::new();
    let public = forged_navigation(&anonymous, &format!("{}/public/x", s.proxy.url())).await;
    assert_eq!(public.status, 200, "{kind:?}: {}", public.describe());
    for header in IDENTITY_HEADERS {
        assert!(
            echoed(&public.json(), header).is_empty(),
            "{kind:?}: forged {header} on a public route: {}",
            public.body
        );
    }

    // Userinfo and sign-out work on the public URL through the proxy.
    let info = browser
        .get(&format!("{}/oauth2/userinfo", s.proxy.url()), &[])
        .await;
    assert_eq!(info.status, 200, "{kind:?}: {}", info.describe());
    assert_eq!(info.json()["email"], ALICE);

    let before = s.upstream.requests().len();
    let out = browser
        .navigate(&format!("{}/oauth2/sign_out", s.proxy.url()))
        .await;
    assert!(
        out.status == 200 || out.status == 302,
        "{kind:?}: sign-out: {}",
        out.describe()
    );
    let again = browser.navigate(&original).await;
    assert_eq!(
        again.status,
        302,
        "{kind:?}: after sign-out: {}",
        again.describe()
    );
    assert_eq!(
        s.upstream.requests().len(),
        before,
        "{kind:?}: reached the upstream after sign-out"
    );
}

#[tokio::test]
async fn caddy_forward_auth_login_reaches_the_upstream_with_identity() {
    login_through(Kind::Caddy).await;
}

#[tokio::test]
async fn nginx_auth_request_login_reaches_the_upstream_with_identity() {
    login_through(Kind::Nginx).await;
}

/// A disallowed account ends at the callback with 403 and never reaches the upstream.
async fn denied_through(kind: Kind) {
    let s = stack(kind);
    let browser = Browser::new();
    let original = format!("{}/app", s.proxy.url());
    let first = browser.navigate(&original).await;
    assert_eq!(
        first.status,
        302,
        "{kind:?}: {}{}",
        first.describe(),
        s.context()
    );
    let walk = walk_to_callback(&browser, &s.idp, first, MALLORY).await;
    let back = browser.navigate(walk.callback.as_str()).await;
    assert_eq!(
        back.status,
        403,
        "{kind:?}: {}{}",
        back.describe(),
        s.context()
    );
    assert!(
        browser.cookie(COOKIE_NAME).is_none(),
        "{kind:?}: a session for mallory"
    );
    let again = browser.navigate(&original).await;
    assert_eq!(again.status, 302, "{kind:?}: {}", again.describe());
    assert!(
        s.upstream.requests().is_empty(),
        "{kind:?}: the upstream was reached: {:?}\n{}",
        s.upstream.requests(),
        trail(&walk.chain)
    );
}

#[tokio::test]
async fn caddy_denies_a_disallowed_account() {
    denied_through(Kind::Caddy).await;
}

#[tokio::test]
async fn nginx_denies_a_disallowed_account() {
    denied_through(Kind::Nginx).await;
}
