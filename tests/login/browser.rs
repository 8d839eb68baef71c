//! A real headless Chromium (Debian's, driven by playwright-core) logs in through Caddy on
//! real-looking names: the app at `app.example.test`, the gate's public URL at
//! `auth.example.test` (both on Caddy's port, resolved to 127.0.0.1 by `--host-resolver-rules`),
//! the session cookie on `Domain=example.test`, the OpenID provider on 127.0.0.1 (another host,
//! as Google is). It reaches the app with its identity, signs out, and is sent to log in again.
//! Peers: `bash tests/support/install-login-peers.sh`.

use crate::support;
use crate::support::browser::{run, Step};
use crate::support::gate::Gate;
use crate::support::login::{LoginGate, COOKIE_NAME};
use crate::support::oidc::{OidcProvider, ALICE};
use crate::support::proxy::{caddy_pass_site, caddy_site, Proxy};
use crate::support::reserve_port;
use crate::support::upstream::{echoed, Upstream};
use serde_json::Value;

fn step(report: &Value, index: usize) -> &Value {
    &report["steps"][index]
}

/// The page text of a step, parsed as the upstream's JSON echo.
fn echo_of(step: &Value) -> Value {
    let body = step["body"].as_str().unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the upstream's echo ({e}): {step}"))
}

/// The harness itself: Chromium resolves `*.example.test` to Caddy, Caddy asks the gate (a public
/// route here) and shows the upstream's echo; a blocked prefix is aborted and reported.
#[tokio::test]
async fn chromium_reaches_the_upstream_through_caddy_on_example_test_names() {
    let _exclusive = support::exclusive().await;
    let gate = Gate::start(
        r#"
[rate_limit]
per_second = 0

[[rules]]
path_prefix = "/private"
policy = "deny"
"#,
    );
    let upstream = Upstream::start();
    let port = reserve_port();
    let app = format!("http://app.example.test:{port}");
    let caddy = Proxy::caddy(port, &caddy_site(&app, gate.addr(), upstream.addr()));

    let report = run(&[
        Step::visit(&format!("{app}/hello?x=1")),
        Step::visit(&format!("{app}/private")),
        Step::visit(&format!("{app}/elsewhere")).blocking(&format!("{app}/elsewhere")),
    ]);
    assert!(
        report["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{report}"
    );

    let hello = step(&report, 0);
    assert_eq!(
        hello["status"],
        200,
        "{hello}\ncaddy:\n{}\ngate:\n{}",
        caddy.log(),
        gate.logs()
    );
    assert_eq!(hello["url"], format!("{app}/hello?x=1"));
    let echo = echo_of(hello);
    assert_eq!(
        echoed(&echo, "host"),
        vec![format!("app.example.test:{port}")],
        "{echo}"
    );
    assert_eq!(echo["uri"], "/hello?x=1");
    assert!(
        echoed(&echo, "accept")
            .first()
            .is_some_and(|a| a.contains("text/html")),
        "a Chromium navigation accepts HTML: {echo}"
    );

    let private = step(&report, 1);
    assert_eq!(private["status"], 403, "{private}");
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());

    let blocked = step(&report, 2);
    assert!(
        blocked["error"]
            .as_str()
            .is_some_and(|e| e.contains("ERR_BLOCKED_BY_CLIENT")),
        "{blocked}"
    );
    assert_eq!(
        blocked["blocked"][0],
        format!("{app}/elsewhere"),
        "{blocked}"
    );
}

/// The whole login in a real browser: the app sends it to the provider via the gate, it comes
/// back to the app with the identity headers and a session cookie for `.example.test`; after
/// sign-out the app sends it to the provider again.
#[tokio::test]
async fn chromium_logs_in_through_caddy_signs_out_and_is_asked_again() {
    let _exclusive = support::exclusive().await;
    let port = reserve_port();
    let app = format!("http://app.example.test:{port}");
    let auth = format!("http://auth.example.test:{port}");
    let idp = OidcProvider::setup()
        .redirect_uri(&format!("{auth}/oauth2/callback"))
        .default_user(ALICE)
        .start();
    let gate = LoginGate::new(&idp, reserve_port())
        .public_url(&auth)
        .cookie_domains(&[".example.test"])
        .redirect_domains(&[&format!(".example.test:{port}")])
        .start();
    let upstream = Upstream::start();
    let sites = format!(
        "{}\n{}",
        caddy_site(&app, gate.addr(), upstream.addr()),
        caddy_pass_site(&auth, gate.addr())
    );
    let caddy = Proxy::caddy(port, &sites);
    let page = format!("{app}/dashboard?panel=7");
    let context = || {
        format!(
            "\ncaddy:\n{}\ngate:\n{}\nprovider:\n{}",
            caddy.log(),
            gate.logs(),
            idp.log()
        )
    };

    let shots = tempfile::tempdir().expect("screenshot dir");
    let report = run(&[
        Step::visit(&page).screenshot(shots.path().join("app.png")),
        Step::visit(&format!("{auth}/oauth2/userinfo")),
        Step::visit(&format!("{auth}/oauth2/sign_out")),
        // After sign-out the app must send the browser to the provider again. The provider still
        // has its own session (as Google would), so the second login is silent: it shows in the
        // chain of redirects and in a new session cookie.
        Step::visit(&page),
    ]);

    // 1. Logged in and back on the page that was asked for, with the identity headers.
    let first = step(&report, 0);
    assert_eq!(first["status"], 200, "{first}{}", context());
    assert_eq!(first["url"], page, "{first}");
    let hosts: Vec<String> = first["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .filter_map(|hop| hop["url"].as_str())
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.host_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        hosts.iter().any(|h| h == "127.0.0.1"),
        "the login went through the provider: {first}"
    );
    assert!(
        first["chain"]
            .as_array()
            .expect("chain")
            .iter()
            .any(|hop| hop["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{auth}/oauth2/callback")))),
        "the provider returned to the gate's public URL: {first}"
    );
    let echo = echo_of(first);
    for header in [
        "X-Auth-Request-Email",
        "X-Auth-Request-User",
        "X-Forwarded-User",
    ] {
        assert_eq!(
            echoed(&echo, header),
            vec![ALICE.to_owned()],
            "{header}: {echo}"
        );
    }
    let session = first["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .find(|c| c["name"] == COOKIE_NAME)
        .unwrap_or_else(|| panic!("no {COOKIE_NAME} cookie in the browser: {first}"))
        .clone();
    assert_eq!(session["domain"], ".example.test", "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    assert_eq!(
        session["secure"], false,
        "plain http in this test: {session}"
    );

    // 2. The gate knows who it is.
    let info = step(&report, 1);
    assert_eq!(info["status"], 200, "{info}");
    let body: Value = serde_json::from_str(info["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("userinfo is not JSON ({e}): {info}"));
    assert_eq!(body["email"], ALICE, "{info}");

    // 3. Signed out: the session cookie is gone from the browser.
    let out = step(&report, 2);
    assert!(
        out["error"].is_null() && out["status"].as_u64().is_some_and(|s| s < 400),
        "sign-out: {out}"
    );
    assert!(
        !out["cookies"]
            .as_array()
            .expect("cookies")
            .iter()
            .any(|c| c["name"] == COOKIE_NAME),
        "the session cookie survived sign-out: {out}"
    );

    // 4. The app sends the browser to log in again (through the provider), not to the upstream
    //    with the old session; it comes back with a new session.
    let again = step(&report, 3);
    let chain = again["chain"].as_array().expect("chain");
    assert_eq!(
        chain.first().map(|hop| &hop["url"]),
        Some(&Value::from(page.clone())),
        "{again}"
    );
    assert_eq!(
        chain[0]["status"], 302,
        "after sign-out the app must send the browser to log in: {again}"
    );
    for (what, prefix) in [
        ("the provider", format!("{}/auth?", idp.url())),
        ("the callback", format!("{auth}/oauth2/callback?")),
    ] {
        assert!(
            chain
                .iter()
                .any(|hop| hop["url"].as_str().is_some_and(|u| u.starts_with(&prefix))),
            "the second login did not pass {what}: {again}"
        );
    }
    assert_eq!(again["status"], 200, "{again}{}", context());
    assert_eq!(again["url"], page, "{again}");
    let renewed = again["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .find(|c| c["name"] == COOKIE_NAME)
        .unwrap_or_else(|| panic!("no session after the second login: {again}"));
    assert_ne!(
        renewed["value"], session["value"],
        "the second login reuses the signed-out session"
    );
    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        2,
        "one upstream request per login: {requests:?}"
    );
    assert_eq!(
        echoed(&requests[1], "X-Forwarded-User"),
        vec![ALICE.to_owned()]
    );
}
