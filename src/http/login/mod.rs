//! The login endpoints: `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`,
//! `/oauth2/userinfo` and the small `/` page.
//!
//! Invariants: no login answer is 2xx unless it only shows information; a failed login creates
//! no session; a `state` works once and only in the browser that started it (binding cookie);
//! every `Location` is absolute and, when it comes from the request, passed the redirect
//! policy. A login step ends in a [`LoginOutcome`], and one function ([`LoginEndpoints::respond`])
//! turns it into the answer, the log line and the `jacker_gate_logins_total` count, so every
//! attempt is counted once and with the label its outcome names.

use std::sync::Arc;
use std::time::Duration;

pub(crate) mod outcome;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tracing::{info, warn};
use url::Url;

use super::page::{escape_html, page, redirect, sign_in_unavailable, Unreachable};
use super::{plain, Body, View};
use crate::clock::Now;
use crate::decision::SessionState;
use crate::metrics::{LoginResult, Metrics, StoreOp};
use crate::oauth::email::EmailPolicy;
use crate::oauth::redirect::RedirectPolicy;
use crate::oauth::{Provider, ProviderError};
use crate::rules::{normalize_host, normalize_path, GatePage, GatePages};
use crate::session::cookie::{random_id, store_key, Purpose};
use crate::session::{PendingLogin, Sessions, StoreError};
use outcome::{admit_identity, BadState, CallbackQuery, CookieValue, LoginOutcome, LoginStep};

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
pub(crate) enum SignOutVia {
    /// `/oauth2/sign_out` on the gate's own router.
    Direct,
    /// A forwarded request for `/oauth2/sign_out` arriving at `/auth`.
    ForwardAuth,
}

/// What the login endpoints share: the provider, the sessions, the policies and the cookie
/// settings. Built once at start-up when a provider is configured.
pub(crate) struct LoginEndpoints {
    /// The OpenID provider.
    pub(crate) provider: Arc<Provider>,
    /// Where the gate's own pages live (`public_url`'s host and path).
    pub(crate) pages: GatePages,
    /// Sessions and pending logins.
    pub(crate) sessions: Arc<Sessions>,
    /// Who may sign in, checked at the callback and again on every request.
    pub(crate) emails: EmailPolicy,
    /// Where a return URL (`rd`) may lead.
    pub(crate) redirects: RedirectPolicy,
    /// `server.public_url`: the base of every login page's address.
    pub(crate) public_url: Url,
    /// The session cookie's name.
    pub(crate) cookie_name: String,
    /// The binding cookie's name (the session cookie's name with `_login`).
    pub(crate) binding_cookie_name: String,
    /// `session.cookie_domains`: a cookie's `Domain` when the host is under one of them.
    pub(crate) cookie_domains: Vec<crate::domain::DomainSuffix>,
    /// Whether cookies carry `Secure`.
    pub(crate) cookie_secure: bool,
    /// Where login results and session-store failures are counted.
    pub(crate) metrics: Arc<Metrics>,
}

/// The first value of query parameter `name`, percent- and form-decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `{public_url}{path}`, keeping any path prefix of `public_url` and dropping its query.
pub(crate) fn endpoint_of(public_url: &Url, path: &str) -> Url {
    let mut url = public_url.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{path}"));
    url.set_query(None);
    url
}

impl LoginEndpoints {
    /// `{public_url}{path}`.
    pub(crate) fn endpoint(&self, path: &str) -> Url {
        endpoint_of(&self.public_url, path)
    }

    /// Where `/auth` sends a visitor without a session: `/oauth2/start?rd=<the original URL>`;
    /// `None` when that URL cannot be a header value.
    pub(crate) fn start_url_for(&self, view: &View<'_>) -> Option<HeaderValue> {
        let mut url = self.endpoint(GatePage::Start.path());
        if let (Some(host), Some(uri)) = (view.host(), view.forwarded.uri) {
            if let Ok(uri) = std::str::from_utf8(uri) {
                let original = format!("{}://{host}{uri}", view.proto);
                url.query_pairs_mut().append_pair("rd", &original);
            }
        }
        HeaderValue::from_str(url.as_str()).ok()
    }

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

    /// Counts and logs a failed store operation. The failure itself is answered by the caller.
    fn store_failed(&self, op: StoreOp, error: &StoreError) {
        self.metrics.store_error(op);
        warn!(op = op.as_str(), %error, "session store error");
    }

    /// The request's session at `now`. A store failure is counted here and becomes
    /// [`SessionState::StoreUnavailable`], which the caller answers with a 503.
    pub(crate) async fn session(&self, view: &View<'_>, now: Now) -> SessionState {
        match self
            .sessions
            .resolve(view.cookies(&self.cookie_name), now)
            .await
        {
            Ok(Some(email)) => SessionState::Valid { email },
            Ok(None) => SessionState::None,
            Err(e) => {
                self.store_failed(StoreOp::Get, &e);
                SessionState::StoreUnavailable
            }
        }
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

    /// `/oauth2/start` at `now`: stores a login attempt and sends the browser to the provider
    /// (302), or answers 503 when the provider or the store cannot be reached.
    pub(crate) async fn start(&self, view: &View<'_>, query: &str, now: Now) -> Response<Body> {
        let outcome = self.begin_login(view, query, now).await;
        self.respond(outcome, view)
    }

    async fn begin_login(&self, view: &View<'_>, query: &str, now: Now) -> LoginOutcome {
        let rd = query_param(query, "rd");
        let return_url = self.return_url(rd.as_deref(), view);
        let hint = query_param(query, "login_hint");
        let attempt = match self.provider.begin(hint.as_deref()).await {
            Ok(a) => a,
            Err(e) => return LoginOutcome::ProviderUnavailable(LoginStep::Start, e),
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
        let record = PendingLogin {
            pkce_verifier: attempt.pkce_verifier,
            nonce: attempt.nonce,
            return_url,
            binding: store_key(&binding_id),
        };
        let key = login_key(&attempt.state, &record.binding);
        if let Err(e) = self
            .sessions
            .put_pending_login(&key, &record, LOGIN_TTL, now)
            .await
        {
            return LoginOutcome::StoreFailed(StoreOp::LoginPut, e);
        }
        LoginOutcome::Started {
            authorize_url: attempt.authorize_url,
            binding_cookie: CookieValue(
                self.sessions
                    .codec()
                    .sign(Purpose::LoginBinding, &binding_id),
            ),
        }
    }

    /// `/oauth2/callback` at `now`: finishes the attempt the browser started and, when the
    /// provider and the email policy agree, creates a session (302 to the return URL);
    /// otherwise an error page, and no session.
    pub(crate) async fn callback(&self, view: &View<'_>, query: &str, now: Now) -> Response<Body> {
        let outcome = self.finish_login(view, query, now).await;
        self.respond(outcome, view)
    }

    async fn finish_login(&self, view: &View<'_>, query: &str, now: Now) -> LoginOutcome {
        let params = match CallbackQuery::parse(query) {
            Ok(p) => p,
            Err(outcome) => return outcome,
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
            return LoginOutcome::InvalidState(BadState::NoBinding);
        }
        let mut found = None;
        for binding in &bindings {
            let key = login_key(&params.state, binding);
            match self.sessions.take_pending_login(&key, now).await {
                Ok(Some(r)) if r.binding == *binding => {
                    found = Some(r);
                    break;
                }
                Ok(_) => {}
                Err(e) => return LoginOutcome::StoreFailed(StoreOp::LoginTake, e),
            }
        }
        let Some(record) = found else {
            return LoginOutcome::InvalidState(BadState::Unknown);
        };
        // RFC 9207: the provider names itself; a mix-up attack names another.
        if let Some(iss) = &params.iss {
            if !self.provider.issuer_matches(iss) {
                return LoginOutcome::InvalidState(BadState::WrongIssuer);
            }
        }
        let identity = match self
            .provider
            .finish(&params.code, &record.pkce_verifier, &record.nonce)
            .await
        {
            Ok(id) => id,
            Err(e @ ProviderError::ProviderUnavailable(_)) => {
                return LoginOutcome::ProviderUnavailable(LoginStep::Callback, e)
            }
            Err(e) => return LoginOutcome::ProviderRejected(e),
        };
        let email = match admit_identity(&self.emails, &identity) {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        match self.sessions.create(&email, now).await {
            Ok(value) => LoginOutcome::SignedIn {
                email,
                session_cookie: CookieValue(value),
                return_url: record.return_url,
            },
            Err(e) => LoginOutcome::StoreFailed(StoreOp::Put, e),
        }
    }

    /// The one mapping from a login step's outcome to its answer. It also counts the outcome
    /// in `jacker_gate_logins_total` and logs it: a failure the client caused is logged as
    /// `login failed` with the client address and the result (never the code, state or a
    /// cookie), which CrowdSec's `jacker/jacker-gate-login-bf` scenario reads to ban an
    /// address that keeps failing; an outage of the provider or the store is not the
    /// client's doing and is logged as a warning instead.
    pub(crate) fn respond(&self, outcome: LoginOutcome, view: &View<'_>) -> Response<Body> {
        let result = outcome.result();
        if let Some(result) = result {
            self.metrics.login(result);
        }
        let domain = self.cookie_domain(view.host());
        let failed = |status: StatusCode, message: &str| {
            let result = result.map_or("", LoginResult::as_str);
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
        };
        match outcome {
            LoginOutcome::Started {
                authorize_url,
                binding_cookie,
            } => {
                let mut resp = redirect(authorize_url.as_str());
                // Re-sent even when reused, to extend it for this attempt's lifetime.
                resp.headers_mut().append(
                    SET_COOKIE,
                    self.set_cookie(
                        &self.binding_cookie_name,
                        &binding_cookie.0,
                        LOGIN_TTL.as_secs(),
                        domain,
                    ),
                );
                resp
            }
            LoginOutcome::SignedIn {
                email,
                session_cookie,
                return_url,
            } => {
                info!(user = %email, "login");
                let mut resp = redirect(&return_url);
                resp.headers_mut().append(
                    SET_COOKIE,
                    self.set_cookie(
                        &self.cookie_name,
                        &session_cookie.0,
                        self.sessions.lifetime().as_secs(),
                        domain,
                    ),
                );
                resp
            }
            LoginOutcome::ProviderDeclined(error) => {
                // Debug form: the value comes from the query and could hold a line break.
                info!(error = ?error, "the identity provider returned an error");
                failed(
                    StatusCode::UNAUTHORIZED,
                    "The identity provider did not sign you in.",
                )
            }
            LoginOutcome::ProviderRejected(error) => {
                warn!(%error, "login rejected");
                failed(
                    StatusCode::UNAUTHORIZED,
                    "The identity provider's answer could not be verified.",
                )
            }
            LoginOutcome::ProviderUnavailable(step, error) => {
                match step {
                    LoginStep::Start => warn!(%error, "cannot start a login"),
                    LoginStep::Callback => {
                        warn!(%error, "identity provider unavailable at the callback")
                    }
                }
                sign_in_unavailable(Unreachable::Provider)
            }
            LoginOutcome::InvalidState(why) => failed(
                StatusCode::BAD_REQUEST,
                match why {
                    BadState::Incomplete => "The sign-in link is incomplete.",
                    BadState::NoBinding => "This sign-in attempt was started in another browser.",
                    BadState::Unknown => "This sign-in attempt is unknown, expired, already used, or was started in another browser.",
                    BadState::WrongIssuer => "The sign-in answer came from an unexpected provider.",
                },
            ),
            LoginOutcome::Unverified => failed(
                StatusCode::FORBIDDEN,
                "This account's email address is not verified.",
            ),
            LoginOutcome::DeniedEmail => {
                failed(StatusCode::FORBIDDEN, "This account is not allowed here.")
            }
            LoginOutcome::StoreFailed(op, error) => {
                self.store_failed(op, &error);
                sign_in_unavailable(Unreachable::Store)
            }
        }
    }

    /// Ends the session: 302 to `rd` when allowed; otherwise the signed-out page, or, through
    /// `/auth` (which cannot show a 2xx page), a 302 to `public_url`. A store failure is a 503
    /// page. The session cookie is cleared in every case.
    pub(crate) async fn sign_out(
        &self,
        view: &View<'_>,
        query: &str,
        via: SignOutVia,
    ) -> Response<Body> {
        let result = self.sessions.revoke(view.cookies(&self.cookie_name)).await;
        if let Err(e) = &result {
            self.store_failed(StoreOp::Revoke, e);
        }
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

    /// `/oauth2/userinfo` at `now`: the session's email as JSON (`{"email", "user"}`); 401
    /// without a session, 403 for an email the policy no longer allows, 503 when the store
    /// cannot say.
    pub(crate) async fn userinfo(&self, view: &View<'_>, now: Now) -> Response<Body> {
        match self.session(view, now).await {
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

    /// `/` at `now`: who is signed in, with a sign-out button, or a link to sign in.
    pub(crate) async fn home(&self, view: &View<'_>, now: Now) -> Response<Body> {
        let start = self.endpoint(GatePage::Start.path());
        let out = self.endpoint(GatePage::SignOut.path());
        match self.session(view, now).await {
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
