//! The login endpoints: `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`,
//! `/oauth2/userinfo` and the small `/` page.
//!
//! Invariants: no login answer is 2xx unless it only shows information; a failed login creates
//! no session; a `state` works once and only in the browser that started it (binding cookie);
//! every `Location` is absolute and, when it comes from the request, passed the redirect
//! policy; login outcomes are counted in `jacker_gate_logins_total`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tracing::{info, warn};
use url::Url;

use super::{plain, Body, View};
use crate::metrics::Metrics;
use crate::oauth::email::{EmailPolicy, EmailVerdict};
use crate::oauth::redirect::RedirectPolicy;
use crate::oauth::{LoginError, Provider};
use crate::rules::{normalize_host, normalize_path, GatePage, GatePages};
use crate::session::cookie::{random_id, store_key, Purpose};
use crate::session::{LoginRecord, SessionState, Sessions};

/// How long a login attempt (state, PKCE verifier, nonce) stays valid.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// At most this many binding cookies are tried at a callback (a browser has one; a repeated
/// cookie must not multiply store calls).
const MAX_BINDINGS: usize = 4;

/// The store key of a login attempt: its `state` and the binding of the browser that started
/// it (the binding cookie's store key).
fn login_key(state: &str, binding: &str) -> String {
    format!("{state}.{binding}")
}

/// How a sign-out request arrived: at the gate's own `/oauth2/sign_out`, or as a forwarded
/// request that `/auth` answers (which must not be 2xx: the proxy would forward it instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutVia {
    Direct,
    ForwardAuth,
}

pub struct Login {
    pub provider: Arc<Provider>,
    /// Where the gate's own pages live (`public_url`'s host and path).
    pub pages: GatePages,
    pub sessions: Arc<Sessions>,
    pub emails: EmailPolicy,
    pub redirects: RedirectPolicy,
    pub public_url: Url,
    pub cookie_name: String,
    pub binding_cookie_name: String,
    pub cookie_domains: Vec<crate::domain::DomainSuffix>,
    pub cookie_secure: bool,
    pub metrics: Arc<Metrics>,
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/` when no provider is configured.
pub fn login_off_page() -> Response<Body> {
    page(
        StatusCode::OK,
        "jacker-gate",
        "<p>Login is off: no identity provider is configured.</p>",
    )
}

/// The most a page of the gate weighs, in bytes. Traefik's forwardAuth reads the answer's body
/// into a buffer of `maxResponseBodySize` bytes allocated for every call, and answers 500 when
/// the body is larger; the deployment sets 4096, twice this bound, so that the buffer stays small
/// and every page fits it, whatever address or URL it shows.
pub const MAX_PAGE_BYTES: usize = 2048;

fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let render = |body_html: &str| {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head><body><h1>{title}</h1>{body_html}</body></html>\n",
            title = escape_html(title)
        )
    };
    let mut html = render(body_html);
    if html.len() > MAX_PAGE_BYTES {
        // Only a very long configured URL or address gets here: the title alone still says what
        // happened, and the status is unchanged.
        html = render("");
        html.truncate(MAX_PAGE_BYTES);
    }
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}

fn redirect(location: &str) -> Response<Body> {
    let mut resp = plain(StatusCode::FOUND, "");
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "bad request\n"),
    }
}

/// `{public_url}{path}`, keeping any path prefix of `public_url`.
pub fn endpoint_of(public_url: &Url, path: &str) -> Url {
    let mut url = public_url.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{path}"));
    url.set_query(None);
    url
}

impl Login {
    fn count(&self, result: &'static str) {
        self.metrics
            .logins
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// `{public_url}{path}`.
    pub fn endpoint(&self, path: &str) -> Url {
        endpoint_of(&self.public_url, path)
    }

    /// Where `/auth` sends a visitor without a session: `/oauth2/start?rd=<the original URL>`.
    pub fn start_url_for(&self, view: &View<'_>) -> Option<HeaderValue> {
        let mut url = self.endpoint(GatePage::Start.path());
        if let (Some(host), Some(uri)) = (view.host(), view.forwarded.uri) {
            if let Ok(uri) = std::str::from_utf8(uri) {
                let original = format!("{}://{host}{uri}", view.proto);
                url.query_pairs_mut().append_pair("rd", &original);
            }
        }
        HeaderValue::from_str(url.as_str()).ok()
    }

    /// The `Domain` for cookies on `host`: the configured cookie domain that covers it, if any.
    /// The cookie domain for a request host: the first entry of `cookie_domains` that covers
    /// it (a `.example.com` entry covers `example.com` and its subdomains, as browsers do).
    fn cookie_domain(&self, host: Option<&str>) -> Option<&str> {
        let host = crate::rules::normalize_host(host?)?;
        self.cookie_domains
            .iter()
            .find(|d| crate::domain::is_within(&host, d.name()))
            .map(|d| d.name())
    }

    fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age: u64,
        domain: Option<&str>,
    ) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax");
        if self.cookie_secure {
            c.push_str("; Secure");
        }
        if let Some(d) = domain {
            c.push_str("; Domain=");
            c.push_str(d);
        }
        HeaderValue::from_str(&c).expect("cookie names and values are header-safe")
    }

    pub async fn session(&self, view: &View<'_>) -> SessionState {
        self.sessions.resolve(view.cookies(&self.cookie_name)).await
    }

    /// The return URL for `rd`, or `public_url` when it is missing or not allowed.
    fn return_url(&self, rd: Option<&str>, view: &View<'_>) -> String {
        self.checked_rd(rd, view)
            .map_or_else(|| self.public_url.to_string(), |u| u.to_string())
    }

    /// `rd` when the redirect policy allows it and it is not one of the gate's own login steps:
    /// returning to `/oauth2/start`, `/oauth2/callback` or `/oauth2/sign_out` would start
    /// another login, replay a used callback or end the new session, so such an `rd` is
    /// dropped like a foreign one.
    fn checked_rd(&self, rd: Option<&str>, view: &View<'_>) -> Option<Url> {
        let origin = view.host().map(|h| (view.proto, h));
        let url = self.redirects.check(rd?, origin)?;
        let host = normalize_host(url.host_str()?)?;
        let path = normalize_path(url.path().as_bytes()).ok()?;
        // A return URL is followed by a navigation: a GET.
        match self.pages.page("GET", &host, &path) {
            Some(GatePage::Start | GatePage::Callback | GatePage::SignOut) => None,
            Some(GatePage::Home | GatePage::UserInfo) | None => Some(url),
        }
    }

    pub async fn start(&self, view: &View<'_>, query: &str) -> Response<Body> {
        let rd = query_param(query, "rd");
        let return_url = self.return_url(rd.as_deref(), view);
        let hint = query_param(query, "login_hint");
        let attempt = match self.provider.begin(hint.as_deref()).await {
            Ok(a) => a,
            Err(e) => {
                self.count("provider_error");
                warn!(error = %e, "cannot start a login");
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable",
                    "<p>The identity provider cannot be reached right now. Please try again in a minute.</p>",
                );
            }
        };
        // One binding cookie per browser: reuse it, so parallel logins in several tabs share
        // it instead of piling up cookies or overwriting each other.
        let existing = view.cookies(&self.binding_cookie_name).find_map(|v| {
            self.sessions
                .codec()
                .verify(Purpose::LoginBinding, v)
                .map(str::to_owned)
        });
        let binding_id = existing.unwrap_or_else(random_id);
        let record = LoginRecord {
            pkce_verifier: attempt.pkce_verifier,
            nonce: attempt.nonce,
            return_url,
            binding: store_key(&binding_id),
        };
        if self
            .sessions
            .put_login(
                &login_key(&attempt.state, &record.binding),
                &record,
                LOGIN_TTL,
            )
            .await
            .is_err()
        {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "<p>The session store cannot be reached right now. Please try again in a minute.</p>",
            );
        }
        let mut resp = redirect(attempt.authorize_url.as_str());
        let domain = self.cookie_domain(view.host());
        let value = self
            .sessions
            .codec()
            .sign(Purpose::LoginBinding, &binding_id);
        // Re-sent even when reused, to extend it for this attempt's lifetime.
        resp.headers_mut().append(
            SET_COOKIE,
            self.set_cookie(
                &self.binding_cookie_name,
                &value,
                LOGIN_TTL.as_secs(),
                domain,
            ),
        );
        resp
    }

    /// The failed-login page. Logged with the client address and the result (never the code,
    /// state or a cookie): CrowdSec's `jacker/jacker-gate-login-bf` scenario reads these lines
    /// and bans an address that keeps failing.
    fn login_failed(
        &self,
        view: &View<'_>,
        result: &'static str,
        status: StatusCode,
        message: &str,
    ) -> Response<Body> {
        self.count(result);
        info!(client = %view.client, result, "login failed");
        let again = self.endpoint(GatePage::Start.path());
        page(
            status,
            "Sign-in failed",
            &format!(
                "<p>{}</p><p><a href=\"{}\">Try again</a></p>",
                escape_html(message),
                escape_html(again.as_str())
            ),
        )
    }

    pub async fn callback(&self, view: &View<'_>, query: &str) -> Response<Body> {
        if let Some(error) = query_param(query, "error") {
            // Debug form: the value comes from the query and could hold a line break.
            info!(error = ?error, "the identity provider returned an error");
            return self.login_failed(
                view,
                "provider_error",
                StatusCode::UNAUTHORIZED,
                "The identity provider did not sign you in.",
            );
        }
        let (Some(state), Some(code)) = (query_param(query, "state"), query_param(query, "code"))
        else {
            return self.login_failed(
                view,
                "invalid_state",
                StatusCode::BAD_REQUEST,
                "The sign-in link is incomplete.",
            );
        };
        // The attempt must finish in the browser that started it. The record is stored under
        // the state and that browser's binding, so a callback presented by another browser
        // finds nothing and cannot use up this browser's attempt.
        let bindings: Vec<String> = view
            .cookies(&self.binding_cookie_name)
            .filter_map(|v| self.sessions.codec().verify(Purpose::LoginBinding, v))
            .map(store_key)
            .take(MAX_BINDINGS)
            .collect();
        if bindings.is_empty() {
            return self.login_failed(
                view,
                "invalid_state",
                StatusCode::BAD_REQUEST,
                "This sign-in attempt was started in another browser.",
            );
        }
        let mut found = None;
        for binding in &bindings {
            match self.sessions.take_login(&login_key(&state, binding)).await {
                Ok(Some(r)) if r.binding == *binding => {
                    found = Some(r);
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    return page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Sign-in is unavailable",
                        "<p>The session store cannot be reached right now. Please try again in a minute.</p>",
                    )
                }
            }
        }
        let Some(record) = found else {
            return self.login_failed(
                view,
                "invalid_state",
                StatusCode::BAD_REQUEST,
                "This sign-in attempt is unknown, expired, already used, or was started in another browser.",
            );
        };
        if let Some(iss) = query_param(query, "iss") {
            // RFC 9207: the provider names itself; a mix-up attack names another.
            if !self.provider.issuer_matches(&iss) {
                return self.login_failed(
                    view,
                    "invalid_state",
                    StatusCode::BAD_REQUEST,
                    "The sign-in answer came from an unexpected provider.",
                );
            }
        }
        let identity = match self
            .provider
            .finish(&code, &record.pkce_verifier, &record.nonce)
            .await
        {
            Ok(id) => id,
            Err(LoginError::ProviderUnavailable(e)) => {
                self.count("provider_error");
                warn!(error = %e, "identity provider unavailable at the callback");
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable",
                    "<p>The identity provider cannot be reached right now. Please try again in a minute.</p>",
                );
            }
            Err(e) => {
                warn!(error = %e, "login rejected");
                return self.login_failed(
                    view,
                    "provider_error",
                    StatusCode::UNAUTHORIZED,
                    "The identity provider's answer could not be verified.",
                );
            }
        };
        match self.emails.check(
            &identity.email,
            identity.email_verified,
            identity.hd.as_deref(),
        ) {
            EmailVerdict::Allowed => {}
            EmailVerdict::Unverified => {
                return self.login_failed(
                    view,
                    "unverified",
                    StatusCode::FORBIDDEN,
                    "This account's email address is not verified.",
                );
            }
            EmailVerdict::Denied => {
                return self.login_failed(
                    view,
                    "denied_email",
                    StatusCode::FORBIDDEN,
                    "This account is not allowed here.",
                );
            }
        }
        let email = identity.email.to_ascii_lowercase();
        let value = match self.sessions.create(&email).await {
            Ok(v) => v,
            Err(_) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable",
                    "<p>The session store cannot be reached right now. Please try again in a minute.</p>",
                )
            }
        };
        self.count("success");
        info!(user = %email, "login");
        let mut resp = redirect(&record.return_url);
        let domain = self.cookie_domain(view.host());
        resp.headers_mut().append(
            SET_COOKIE,
            self.set_cookie(
                &self.cookie_name,
                &value,
                self.sessions.lifetime().as_secs(),
                domain,
            ),
        );
        resp
    }

    /// Ends the session: 302 to `rd` when allowed; otherwise the signed-out page, or, through
    /// `/auth` (which cannot show a 2xx page), a 302 to `public_url`.
    pub async fn sign_out(&self, view: &View<'_>, query: &str, via: SignOutVia) -> Response<Body> {
        let result = self.sessions.revoke(view.cookies(&self.cookie_name)).await;
        let rd = query_param(query, "rd");
        let target = self
            .checked_rd(rd.as_deref(), view)
            .or_else(|| (via == SignOutVia::ForwardAuth).then(|| self.public_url.clone()));
        let mut resp = match (&result, target) {
            (Err(_), _) => page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-out incomplete",
                "<p>The session store cannot be reached; your session may still be valid elsewhere. Please try again.</p>",
            ),
            (Ok(()), Some(url)) => redirect(url.as_str()),
            (Ok(()), None) => page(
                StatusCode::OK,
                "Signed out",
                &format!(
                    "<p>You are signed out.</p><p><a href=\"{}\">Sign in again</a></p>",
                    escape_html(self.endpoint(GatePage::Start.path()).as_str())
                ),
            ),
        };
        // Clear the cookie both with the matching Domain and host-only.
        let domain = self.cookie_domain(view.host());
        let h = resp.headers_mut();
        h.append(SET_COOKIE, self.set_cookie(&self.cookie_name, "", 0, None));
        if domain.is_some() {
            h.append(
                SET_COOKIE,
                self.set_cookie(&self.cookie_name, "", 0, domain),
            );
        }
        resp
    }

    pub async fn userinfo(&self, view: &View<'_>) -> Response<Body> {
        match self.session(view).await {
            SessionState::Valid { email } if self.emails.allows_session(&email) => {
                let body = serde_json::json!({ "email": &*email, "user": &*email }).to_string();
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            SessionState::Valid { .. } => plain(StatusCode::FORBIDDEN, "forbidden\n"),
            SessionState::StoreUnavailable => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "session store unavailable\n",
            ),
            SessionState::None => plain(StatusCode::UNAUTHORIZED, "not signed in\n"),
        }
    }

    pub async fn home(&self, view: &View<'_>) -> Response<Body> {
        let start = self.endpoint(GatePage::Start.path());
        let out = self.endpoint(GatePage::SignOut.path());
        match self.session(view).await {
            SessionState::Valid { email } => page(
                StatusCode::OK,
                "jacker-gate",
                &format!(
                    "<p>Signed in as <b>{}</b>.</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form>",
                    escape_html(&email),
                    escape_html(out.as_str())
                ),
            ),
            SessionState::StoreUnavailable => page(
                StatusCode::SERVICE_UNAVAILABLE,
                "jacker-gate",
                "<p>The session store cannot be reached right now.</p>",
            ),
            SessionState::None => page(
                StatusCode::OK,
                "jacker-gate",
                &format!(
                    "<p>You are not signed in.</p><p><a href=\"{}\">Sign in</a></p>",
                    escape_html(start.as_str())
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_len(resp: Response<Body>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test]
    async fn a_page_never_outgrows_the_bound_traefik_reads() {
        for n in [0, 100, 1000, 1900, 2048, 5000, 100_000] {
            // `&` becomes `&amp;`: five times the bytes once escaped.
            let shown = escape_html(&"&".repeat(n));
            let resp = page(StatusCode::OK, "Signed out", &format!("<p>{shown}</p>"));
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(body_len(resp).await <= MAX_PAGE_BYTES, "{n}");
        }
        let resp = page(StatusCode::FORBIDDEN, &"t".repeat(5000), "");
        assert!(body_len(resp).await <= MAX_PAGE_BYTES);
    }

    #[tokio::test]
    async fn a_page_with_the_longest_address_and_a_long_url_is_shown_whole() {
        // RFC 5321 caps an address at 254 bytes; a public URL of 200 bytes is already unusual.
        let email = format!("{}@{}.example", "a".repeat(64), "b".repeat(180));
        let url = format!("https://{}.example.com/oauth2/sign_out", "c".repeat(160));
        let body = format!(
            "<p>Signed in as <b>{}</b>.</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Sign out</button></form>",
            escape_html(&email),
            escape_html(&url)
        );
        let resp = page(StatusCode::OK, "jacker-gate", &body);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&bytes);
        assert!(html.contains(&email) && html.contains(&url), "{html}");
    }
}
