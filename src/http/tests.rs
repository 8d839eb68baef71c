//! In-process tests of the HTTP edge: the app is built from a config and called directly,
//! without a socket (the socket tests live in `tests/`).

use std::net::IpAddr;
use std::time::Duration;

use http::header::SET_COOKIE;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

use super::*;
use crate::config;
use crate::server::build_app;

const PROXY: &str = "127.0.0.1";
const OUTSIDER: &str = "203.0.113.9";

fn app(toml: &str) -> Arc<App> {
    app_at(toml, Arc::new(crate::clock::SystemClock))
}

fn app_at(toml: &str, clock: Arc<dyn Clock>) -> Arc<App> {
    let config = config::parse(toml, &[]).unwrap();
    futures_util::FutureExt::now_or_never(build_app(&config, clock))
        .expect("building the app waits for nothing")
        .unwrap()
}

fn forwarded(uri: &str) -> http::request::Builder {
    Request::get("/auth")
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example.com")
        .header("X-Forwarded-Uri", uri)
}

async fn call(app: &App, req: http::request::Builder, peer: &str) -> Response<Body> {
    app.handle(
        req.body(Full::new(Bytes::new())).unwrap(),
        peer.parse::<IpAddr>().unwrap(),
    )
    .await
}

async fn status(app: &App, req: http::request::Builder, peer: &str) -> StatusCode {
    call(app, req, peer).await.status()
}

const DENY_ADMIN: &str = r#"
[rate_limit]
per_second = 0
[[rules]]
path_prefix = "/admin"
policy = "deny"
"#;

#[tokio::test]
async fn routes() {
    let a = app("");
    for (path, want) in [
        ("/healthz", StatusCode::OK),
        ("/healthz?probe=1", StatusCode::OK),
        ("/readyz", StatusCode::OK),
        ("/metrics", StatusCode::OK),
        ("/healthz/", StatusCode::NOT_FOUND),
        ("/HEALTHZ", StatusCode::NOT_FOUND),
        ("/auth/", StatusCode::NOT_FOUND),
        ("/", StatusCode::OK),
        ("/oauth2/start", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(status(&a, Request::get(path), PROXY).await, want, "{path}");
    }
}

#[tokio::test]
async fn deny_rules_and_normalisation() {
    let a = app(DENY_ADMIN);
    assert_eq!(status(&a, forwarded("/"), PROXY).await, StatusCode::OK);
    assert_eq!(
        status(&a, forwarded("/admin"), PROXY).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&a, forwarded("/x/../admin/"), PROXY).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&a, forwarded("/%61dmin"), PROXY).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&a, forwarded("/a%2fadmin"), PROXY).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(&a, forwarded("/../admin"), PROXY).await,
        StatusCode::BAD_REQUEST
    );
    // /auth-request gives the same decision.
    let req = forwarded("/admin").uri("/auth-request");
    assert_eq!(status(&a, req, PROXY).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let a = app(DENY_ADMIN);
    // The outsider claims to request "/" but is judged on its own path, /auth.
    let req = forwarded("/admin").header("Host", "gate.internal");
    assert_eq!(status(&a, req, OUTSIDER).await, StatusCode::OK);
    // Without a Host header (HTTP/1.1 requires one) the route cannot be judged.
    assert_eq!(
        status(&a, forwarded("/"), OUTSIDER).await,
        StatusCode::BAD_REQUEST
    );
    let direct = Request::get("/auth").header("Host", "app.example.com");
    assert_eq!(status(&a, direct, OUTSIDER).await, StatusCode::OK);
    // Forwarded headers from an untrusted peer are counted (a misplaced trusted_proxies).
    let m = a.metrics.encode();
    assert!(m.contains("jacker_gate_untrusted_forwarded_total 2"), "{m}");
}

#[tokio::test]
async fn missing_repeated_or_garbage_forwarded_headers_are_400() {
    let a = app(DENY_ADMIN);
    let cases: Vec<(&str, http::request::Builder)> = vec![
        (
            "no X-Forwarded-Uri",
            Request::get("/auth")
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Host", "h"),
        ),
        (
            "no X-Forwarded-Host",
            Request::get("/auth")
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", "/"),
        ),
        (
            "no X-Forwarded-Method",
            Request::get("/auth")
                .header("X-Forwarded-Host", "h")
                .header("X-Forwarded-Uri", "/"),
        ),
        (
            "two X-Forwarded-Uri",
            forwarded("/").header("X-Forwarded-Uri", "/admin"),
        ),
        (
            "two X-Forwarded-Host",
            forwarded("/").header("X-Forwarded-Host", "other"),
        ),
        (
            "empty X-Forwarded-Host",
            forwarded("/").header("X-Forwarded-Host", ""),
        ),
        (
            "garbage X-Forwarded-For",
            forwarded("/").header("X-Forwarded-For", "not-an-ip"),
        ),
        ("relative X-Forwarded-Uri", forwarded("admin")),
        (
            "non-UTF-8 host",
            forwarded("/").header(
                "X-Forwarded-Host",
                HeaderValue::from_bytes(b"h\xff").unwrap(),
            ),
        ),
        (
            "non-UTF-8 uri",
            Request::get("/auth")
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Host", "h")
                .header(
                    "X-Forwarded-Uri",
                    HeaderValue::from_bytes(b"/\xc3\x28").unwrap(),
                ),
        ),
    ];
    for (name, req) in cases {
        let mut req = req;
        if name == "two X-Forwarded-Host"
            || name == "empty X-Forwarded-Host"
            || name == "non-UTF-8 host"
        {
            // Replace the builder's single host with the case's values.
            let mut r = req.body(Full::new(Bytes::new())).unwrap();
            let values: Vec<HeaderValue> = r
                .headers()
                .get_all("x-forwarded-host")
                .iter()
                .cloned()
                .collect();
            r.headers_mut().remove("x-forwarded-host");
            let keep: Vec<HeaderValue> = match name {
                "two X-Forwarded-Host" => values,
                _ => values.into_iter().skip(1).collect(),
            };
            for v in keep {
                r.headers_mut().append("x-forwarded-host", v);
            }
            let got = a.handle(r, PROXY.parse().unwrap()).await.status();
            assert_eq!(got, StatusCode::BAD_REQUEST, "{name}");
            continue;
        }
        req = req.header("X-Test-Case", name);
        assert_eq!(
            status(&a, req, PROXY).await,
            StatusCode::BAD_REQUEST,
            "{name}"
        );
    }
}

#[tokio::test]
async fn underscore_and_prefix_variants_are_never_read() {
    // X_Forwarded_For naming a banned-looking client must not replace the real walk, and
    // X-Forwarded-Prefix must not change the path that rules see.
    let a = app(DENY_ADMIN);
    let req = forwarded("/admin")
        .header("X-Forwarded-Prefix", "/public")
        .header("X_Forwarded_Uri", "/public");
    assert_eq!(status(&a, req, PROXY).await, StatusCode::FORBIDDEN);
    let req = forwarded("/")
        .header("X_Forwarded_For", "not-an-ip")
        .header("X-Forwarded-Port", "garbage");
    assert_eq!(status(&a, req, PROXY).await, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_keys_on_the_real_client() {
    let a = app("[rate_limit]\nper_second = 1\nburst = 3\nexempt = [\"198.51.100.0/24\"]\n");
    for i in 0..3 {
        // The left-most entry changes every time; the real client (right-most) does not.
        let req = forwarded("/").header("X-Forwarded-For", format!("10.9.9.{i}, 192.0.2.1"));
        assert_eq!(status(&a, req, PROXY).await, StatusCode::OK, "request {i}");
    }
    let req = forwarded("/").header("X-Forwarded-For", "10.9.9.99, 192.0.2.1");
    let resp = call(&a, req, PROXY).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    for _ in 0..10 {
        let req = forwarded("/").header("X-Forwarded-For", "198.51.100.7");
        assert_eq!(
            status(&a, req, PROXY).await,
            StatusCode::OK,
            "exempt client"
        );
    }
    let metrics = a.metrics.encode();
    assert!(
        metrics.contains("jacker_gate_requests_total{endpoint=\"auth\",verdict=\"limited\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let a = app("[server]\nmax_header_bytes = 2048\n");
    let req = forwarded("/").header("X-Big", "a".repeat(2100));
    assert_eq!(
        status(&a, req, PROXY).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let req = forwarded("/").header("X-Small", "a".repeat(1000));
    assert_eq!(status(&a, req, PROXY).await, StatusCode::OK);
}

#[tokio::test]
async fn deny_verdicts_never_answer_2xx() {
    let a = app("");
    let req = forwarded("/").body(()).unwrap();
    let view = View::new(&req, true);
    for v in [
        Verdict::NeedsLogin,
        Verdict::CrowdsecUnavailable,
        Verdict::Banned(crate::crowdsec::Remediation::Captcha),
        Verdict::Forbidden,
        Verdict::ForbiddenUser,
        Verdict::StoreUnavailable,
        Verdict::Limited {
            retry_after_secs: 1,
        },
        Verdict::BadRequest(crate::decision::BadRequest::Uri),
    ] {
        for e in [
            crate::metrics::Endpoint::Auth,
            crate::metrics::Endpoint::AuthRequest,
        ] {
            let status = a.respond(v.clone(), &view, e).status();
            assert!(!status.is_success(), "{v:?} on {e:?} answered {status}");
        }
    }
}

#[test]
fn health_urls_dial_loopback_for_wildcards() {
    assert_eq!(
        health_base_url("0.0.0.0:8080".parse().unwrap()),
        "http://127.0.0.1:8080"
    );
    assert_eq!(
        health_base_url("[::]:8080".parse().unwrap()),
        "http://[::1]:8080"
    );
    assert_eq!(
        health_base_url("10.1.2.3:9".parse().unwrap()),
        "http://10.1.2.3:9"
    );
}

/// A request body is read before the answer (Traefik's `forwardBody`), up to the bound; past
/// it the answer is 413 and never 2xx.
#[tokio::test]
async fn request_bodies_are_read_then_judged() {
    let a = app(DENY_ADMIN);
    let with_body = |uri: &str, len: usize| {
        forwarded(uri)
            .method("POST")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    let peer: IpAddr = PROXY.parse().unwrap();
    for len in [1, 64 * 1024, 1 << 20] {
        let ok = a.handle(with_body("/", len), peer).await.status();
        assert_eq!(ok, StatusCode::OK, "{len} bytes on a public route");
        let denied = a.handle(with_body("/admin", len), peer).await.status();
        assert_eq!(
            denied,
            StatusCode::FORBIDDEN,
            "{len} bytes on a denied route"
        );
    }
    let big = a
        .handle(with_body("/", MAX_BODY_BYTES as usize + 1), peer)
        .await;
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.headers()["connection"], "close");
}

/// `/` answers a small page also when login is off (no provider configured).
#[tokio::test]
async fn home_page_without_a_provider() {
    let a = app("");
    let resp = call(&a, Request::get("/"), OUTSIDER).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("Login is off"), "{body}");
}

/// Endpoints other than the decision read at most a small body.
#[tokio::test]
async fn other_endpoints_read_only_a_small_body() {
    let a = app("");
    let peer: IpAddr = PROXY.parse().unwrap();
    let post = |len: usize| {
        Request::post("/")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    let small = a.handle(post(1024), peer).await.status();
    assert_eq!(small, StatusCode::OK);
    let big = a
        .handle(post(MAX_PAGE_BODY_BYTES as usize + 1), peer)
        .await
        .status();
    assert_eq!(big, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A body that never ends is cut off with 408 after the read timeout, and the decision was
/// still made and counted (the rate limit and CrowdSec see slow clients too).
#[tokio::test(start_paused = true)]
async fn a_body_that_never_ends_is_408_and_still_counted() {
    let a = app(DENY_ADMIN);
    let never = http_body_util::StreamBody::new(futures_util::stream::pending::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >());
    let req = forwarded("/admin").method("POST").body(never).unwrap();
    let resp = a.handle(req, PROXY.parse().unwrap()).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(resp.headers()["connection"], "close");
    let metrics = a.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("verdict=\"forbidden\"") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// A gate with a provider (never contacted: these tests stop before any provider call), the
/// memory store, sessions of an hour trusted from the cache for 5 s, and every route behind a
/// login. The secret files live as long as the returned directory.
fn login_app(clock: Arc<dyn Clock>) -> (Arc<App>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let client_secret = dir.path().join("client_secret");
    std::fs::write(&client_secret, "s3cret\n").unwrap();
    let cookie_secret = dir.path().join("cookie_secret");
    std::fs::write(
        &cookie_secret,
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm\n",
    )
    .unwrap();
    let toml = format!(
        "[server]\npublic_url = \"https://auth.example.com\"\n\
         [auth]\nprovider = \"oidc\"\nissuer_url = \"https://idp.example.com\"\n\
         client_id = \"gate\"\nclient_secret_file = {client_secret:?}\n\
         allowed_domains = [\"example.com\"]\n\
         [session]\ncookie_secret_file = {cookie_secret:?}\nlifetime = \"1h\"\ncache_ttl = \"5s\"\n\
         [rate_limit]\nper_second = 0\n"
    );
    (app_at(&toml, clock), dir)
}

/// The request's one clock reading decides the session's expiry: the same cookie passes up
/// to the end of its lifetime and not a millisecond after, with no real time passing.
#[tokio::test]
async fn a_session_is_judged_at_the_request_clock() {
    let t0 = Now::from_unix_secs(1_800_000_000);
    let clock = Arc::new(crate::clock::FakeClock::new(t0));
    let (a, _secrets) = login_app(clock.clone());
    let login = a.login.as_ref().expect("login is configured");
    let cookie = login
        .sessions
        .create("alice@example.com", t0)
        .await
        .unwrap();
    let with_cookie = || forwarded("/").header("Cookie", format!("_jacker_gate={cookie}"));

    let resp = call(&a, with_cookie(), PROXY).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-auth-request-email"], "alice@example.com");
    clock.advance(Duration::from_secs(3600) - Duration::from_millis(1));
    assert_eq!(status(&a, with_cookie(), PROXY).await, StatusCode::OK);
    clock.advance(Duration::from_millis(1));
    let resp = call(&a, with_cookie(), PROXY).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "expired at its lifetime"
    );
    assert!(resp.headers().get("x-auth-request-email").is_none());
}

/// Every way a login step ends is answered by one mapping: the status it documents, no cookie
/// for a failure, and one count under the label the outcome names (a store failure included).
#[tokio::test]
async fn every_login_outcome_is_answered_and_counted_under_its_label() {
    use crate::metrics::StoreOp;
    use crate::oauth::ProviderError;
    use crate::session::StoreError;
    use login::outcome::{BadState, CookieValue, LoginOutcome, LoginStep};

    let (a, _secrets) = login_app(Arc::new(crate::clock::SystemClock));
    let login = a.login.as_ref().expect("login is configured");
    let req = Request::get("/oauth2/callback").body(()).unwrap();
    let view = View::new(&req, false);
    let store_down = || StoreError::Unavailable("connection refused".into());
    let cases = [
        (LoginOutcome::ProviderDeclined("access_denied".into()), 401),
        (
            LoginOutcome::ProviderRejected(ProviderError::InvalidToken("bad signature".into())),
            401,
        ),
        (
            LoginOutcome::ProviderUnavailable(
                LoginStep::Callback,
                ProviderError::ProviderUnavailable("timeout".into()),
            ),
            503,
        ),
        (
            LoginOutcome::ProviderUnavailable(
                LoginStep::Start,
                ProviderError::ProviderUnavailable("timeout".into()),
            ),
            503,
        ),
        (LoginOutcome::InvalidState(BadState::Incomplete), 400),
        (LoginOutcome::InvalidState(BadState::NoBinding), 400),
        (LoginOutcome::InvalidState(BadState::Unknown), 400),
        (LoginOutcome::InvalidState(BadState::WrongIssuer), 400),
        (LoginOutcome::Unverified, 403),
        (LoginOutcome::DeniedEmail, 403),
        (
            LoginOutcome::StoreFailed(StoreOp::LoginPut, store_down()),
            503,
        ),
        (
            LoginOutcome::StoreFailed(StoreOp::LoginTake, store_down()),
            503,
        ),
        (LoginOutcome::StoreFailed(StoreOp::Put, store_down()), 503),
    ];
    for (outcome, want) in cases {
        let shown = format!("{outcome:?}");
        let resp = login.respond(outcome, &view);
        assert_eq!(resp.status().as_u16(), want, "{shown}");
        assert!(resp.headers().get(SET_COOKIE).is_none(), "{shown}");
        if want == 503 {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains("Sign-in is unavailable"), "{shown}: {body}");
        }
    }
    let signed_in = login.respond(
        LoginOutcome::SignedIn {
            email: "alice@example.com".into(),
            session_cookie: CookieValue("v".into()),
            return_url: "https://app.example.com/".into(),
        },
        &view,
    );
    assert_eq!(signed_in.status(), StatusCode::FOUND);
    assert_eq!(signed_in.headers()[LOCATION], "https://app.example.com/");
    let set = signed_in.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("_jacker_gate=v;"), "{set}");
    // A start that went well is counted when the attempt ends, not now.
    let started = login.respond(
        LoginOutcome::Started {
            authorize_url: "https://idp.example.com/authorize?state=s".parse().unwrap(),
            binding_cookie: CookieValue("b".into()),
        },
        &view,
    );
    assert_eq!(started.status(), StatusCode::FOUND);

    let m = a.metrics.encode();
    for (result, n) in [
        ("success", 1),
        ("provider_error", 4),
        ("invalid_state", 4),
        ("unverified", 1),
        ("denied_email", 1),
        ("store_error", 3),
    ] {
        let line = format!("jacker_gate_logins_total{{result=\"{result}\"}} {n}\n");
        assert!(m.contains(&line), "{line} missing from\n{m}");
    }
    for op in ["login_put", "login_take", "put"] {
        let line = format!("jacker_gate_session_store_errors_total{{op=\"{op}\"}} 1\n");
        assert!(m.contains(&line), "{line} missing from\n{m}");
    }
}
