//! The HTTP edge: routes, header extraction, and the one place a [`Verdict`] becomes a
//! response.
//!
//! Invariants: only this module knows header names and hyper types; `X-Forwarded-*` is read
//! only from a trusted peer, and only under its exact names (never `X_Forwarded_For`, never
//! `X-Forwarded-Prefix`/`-Port`); a forwarded value that is missing, repeated or not text turns
//! into a 400, never an allow; health paths match exactly.

mod body;
pub(crate) mod login;
pub(crate) mod page;

pub(crate) use body::{MAX_BODY_BYTES, MAX_PAGE_BODY_BYTES};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body as RequestBody;

use crate::client_ip::{client_ip, TrustedProxies};
use crate::clock::{Clock, Now};
use crate::crowdsec::lapi::Bouncer;
use crate::decision::{
    decide, rate_key, session_verdict, BadRequest, CrowdsecState, Forwarded, SessionState, Step,
    Verdict,
};
use crate::metrics::{Endpoint, Metrics};
use crate::ratelimit::{Limiter, Outcome};
use crate::rules::{GatePage, Rules};
use login::{LoginEndpoints, SignOutVia};

/// The body of every answer: whole, in memory (the gate's answers are small).
pub(crate) type Body = Full<Bytes>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");
const X_AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
const X_AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    /// `server.trusted_proxies`: the peers whose `X-Forwarded-*` is read.
    pub(crate) trusted: TrustedProxies,
    /// The route rules, with the gate's own pages.
    pub(crate) rules: Rules,
    /// The rate limiter (step 3): this replica's budget, and its fallback with a shared one.
    pub(crate) limiter: Limiter,
    /// `rate_limit.store = "redis"`: the budget shared by every replica.
    pub(crate) shared: Option<crate::shared_limit::SharedLimit>,
    /// The CrowdSec bouncer (step 2); `None` when CrowdSec is off.
    pub(crate) bouncer: Option<Arc<Bouncer>>,
    /// The login endpoints; `None` without a provider.
    pub(crate) login: Option<LoginEndpoints>,
    /// Every metric.
    pub(crate) metrics: Arc<Metrics>,
    /// `server.max_header_bytes`: names and values, summed; more is 431.
    pub(crate) max_header_bytes: usize,
    /// Unix seconds of the last "untrusted peer sent X-Forwarded-*" warning.
    pub(crate) untrusted_warned: std::sync::atomic::AtomicU64,
    /// The wall clock, read once per request that needs the time.
    pub(crate) clock: Arc<dyn Clock>,
}

/// What the edge knows about one request once its headers are read.
pub(crate) struct View<'a> {
    /// Whether the TCP peer is in `server.trusted_proxies`.
    pub(crate) peer_trusted: bool,
    /// The request's headers.
    pub(crate) headers: &'a HeaderMap,
    /// The original request as the proxy describes it (or this request, from an untrusted peer).
    pub(crate) forwarded: Forwarded<'a>,
    /// `http` or `https`: the forwarded scheme from a trusted proxy, else `http`.
    pub(crate) proto: &'a str,
    /// The client address step 1 settled on (the TCP peer until then), for log lines that a
    /// CrowdSec scenario reads (failed logins).
    pub(crate) client: IpAddr,
}

impl<'a> View<'a> {
    fn new<B>(req: &'a Request<B>, trusted: bool) -> Self {
        let headers = req.headers();
        let forwarded = if trusted {
            Forwarded {
                method: single_text(headers, &X_FORWARDED_METHOD),
                host: single_text(headers, &X_FORWARDED_HOST),
                uri: single(headers, &X_FORWARDED_URI).map(HeaderValue::as_bytes),
            }
        } else {
            // An untrusted peer is judged on its own request line, whatever it claims.
            Forwarded {
                method: Some(req.method().as_str()),
                host: single_text(headers, &HOST).or(req.uri().host()),
                uri: Some(
                    req.uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .as_bytes(),
                ),
            }
        };
        let proto = match trusted
            .then(|| single_text(headers, &X_FORWARDED_PROTO))
            .flatten()
        {
            Some("https") => "https",
            Some("http") => "http",
            // Traefik always sends it; without it assume the safe default.
            _ if trusted => "https",
            _ => "http",
        };
        Self {
            peer_trusted: trusted,
            headers,
            forwarded,
            proto,
            client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// A navigation a browser can follow a redirect on (GET/HEAD asking for HTML, not XHR).
    /// Only a login answer needs it, so it is not computed on the hot path.
    pub(crate) fn browser_navigation(&self) -> bool {
        let method_ok = matches!(self.forwarded.method, Some("GET" | "HEAD"));
        let wants_html = self
            .headers
            .get_all(ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
        let xhr = self
            .headers
            .get(X_REQUESTED_WITH)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
        method_ok && wants_html && !xhr
    }

    /// Every value of cookie `name` the request carries.
    pub(crate) fn cookies(&self, name: &'a str) -> impl Iterator<Item = &'a str> {
        crate::session::cookie::cookie_values(
            self.headers
                .get_all(COOKIE)
                .into_iter()
                .map(HeaderValue::as_bytes),
            name,
        )
    }

    /// The query of the forwarded request target (without `?` and any fragment); empty when
    /// there is none.
    pub(crate) fn forwarded_query(&self) -> &'a str {
        let uri = self
            .forwarded
            .uri
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or("");
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        query.split_once('#').map_or(query, |(q, _)| q)
    }

    /// The host the browser addressed: the forwarded host from a trusted proxy, else `Host`.
    pub(crate) fn host(&self) -> Option<&'a str> {
        self.forwarded.host
    }
}

/// What `/auth` answers: a verdict, or one of the gate's own pages answered in place.
enum Answer {
    Verdict(Verdict),
    Page(GatePage, Response<Body>),
}

impl App {
    /// Answers one request from `peer` (the TCP peer address). The request body, if any, is
    /// read and discarded before the answer is sent (up to [`MAX_BODY_BYTES`] on `/auth` and
    /// `/auth-request`, [`MAX_PAGE_BODY_BYTES`] elsewhere); no endpoint uses it.
    pub(crate) async fn handle<B>(&self, req: Request<B>, peer: IpAddr) -> Response<Body>
    where
        B: RequestBody,
    {
        let size: usize = req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if size > self.max_header_bytes {
            return plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large\n",
            );
        }
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        // The answer is decided first (CrowdSec and the rate limit see every request, however
        // slow its body), then the body is read to its end, and only then sent: a proxy still
        // writing the body when the answer arrives fails with a broken pipe.
        let decision = matches!(req.uri().path(), "/auth" | "/auth-request");
        let response = self.route(&req, peer).await;
        let limit = if decision {
            MAX_BODY_BYTES
        } else {
            MAX_PAGE_BODY_BYTES
        };
        match body::drain(body, limit).await {
            Ok(()) => response,
            Err(refused) => refused.response(),
        }
    }

    async fn route(&self, req: &Request<()>, peer: IpAddr) -> Response<Body> {
        let path = req.uri().path();
        match (path, &self.login) {
            ("/auth", _) => self.decision(req, peer, Endpoint::Auth).await,
            ("/auth-request", _) => self.decision(req, peer, Endpoint::AuthRequest).await,
            ("/healthz", _) => plain(StatusCode::OK, "ok\n"),
            ("/readyz", _) => self.readiness().await,
            ("/metrics", _) => {
                self.metrics.ratelimit_keys.set(self.limiter.len() as i64);
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            (
                "/" | "/oauth2/start" | "/oauth2/callback" | "/oauth2/sign_out"
                | "/oauth2/userinfo",
                Some(login),
            ) => {
                // The one clock reading of this request, as on `/auth`.
                let now = self.clock.now();
                let peer = crate::client_ip::canonical(peer);
                let trusted = self.trusted.contains(peer);
                let mut view = View::new(req, trusted);
                view.client = peer;
                // The login endpoints face the internet too: CrowdSec and the rate limit apply.
                let client = match self.client(&view, peer) {
                    Ok(ip) => ip,
                    Err(bad) => {
                        return self.respond(Verdict::BadRequest(bad), &view, Endpoint::Auth)
                    }
                };
                view.client = client;
                let crowdsec = self.crowdsec(client, now).await;
                let rate = self.rate(crowdsec, client, None).await;
                if let Some(v) = crate::decision::admit(crowdsec, rate) {
                    return self.respond(v, &view, Endpoint::Auth);
                }
                let query = req.uri().query().unwrap_or("");
                match path {
                    "/" => login.home(&view, now).await,
                    "/oauth2/start" => login.start(&view, query, now).await,
                    "/oauth2/callback" => login.callback(&view, query, now).await,
                    "/oauth2/sign_out" if matches!(*req.method(), Method::GET | Method::POST) => {
                        login.sign_out(&view, query, SignOutVia::Direct).await
                    }
                    "/oauth2/sign_out" => {
                        plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                    }
                    _ => login.userinfo(&view, now).await,
                }
            }
            // `/` answers also without a provider (README, endpoints), saying that login is off.
            ("/", None) => page::login_off_page(),
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn readiness(&self) -> Response<Body> {
        let now = self.clock.now();
        if !self.bouncer.as_ref().is_none_or(|b| b.ready(now)) {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: CrowdSec decisions not synced\n",
            );
        }
        if let Some(login) = &self.login {
            if !login.sessions.ping().await {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the session store does not answer\n",
                );
            }
        }
        match &self.shared {
            // The gate still serves, on each replica's own budget.
            Some(shared) if shared.falling_back().await => {
                plain(StatusCode::OK, "ready\nrate limit: local fallback\n")
            }
            _ => plain(StatusCode::OK, "ready\n"),
        }
    }

    /// Step 3's token, taken by the edge (the shared store is IO) for the pure decision; none
    /// when CrowdSec already denies.
    async fn rate(&self, crowdsec: CrowdsecState, client: IpAddr, user: Option<&str>) -> Outcome {
        let key = rate_key(client, &self.limiter, user).filter(|_| crowdsec.passes());
        match (key, &self.shared) {
            (None, _) => Outcome::Allowed,
            (Some(k), Some(shared)) => shared.check(k, &self.limiter).await,
            (Some(k), None) => self.limiter.check(k),
        }
    }

    /// Step 1: the client address, from the `X-Forwarded-For` walk when the peer is trusted.
    fn client(&self, view: &View<'_>, peer: IpAddr) -> Result<IpAddr, BadRequest> {
        if !view.peer_trusted {
            return Ok(peer);
        }
        let lines = view
            .headers
            .get_all(X_FORWARDED_FOR)
            .into_iter()
            .map(|v| v.as_bytes());
        client_ip(peer, lines, &self.trusted).map_err(|_| BadRequest::ForwardedFor)
    }

    async fn crowdsec(&self, client: IpAddr, now: Now) -> CrowdsecState {
        match &self.bouncer {
            Some(b) => b.check(client, now).await,
            None => CrowdsecState::Off,
        }
    }

    async fn decision(
        &self,
        req: &Request<()>,
        peer: IpAddr,
        endpoint: Endpoint,
    ) -> Response<Body> {
        let started = Instant::now();
        // The one wall-clock reading of this request: CrowdSec's expiry and staleness, the
        // session's expiry and cache, and the stores' TTLs are all judged at this instant.
        let now = self.clock.now();
        let peer = crate::client_ip::canonical(peer);
        let mut view = View::new(req, self.trusted.contains(peer));
        view.client = peer;
        if !view.peer_trusted {
            self.note_untrusted_forwarding(&view, peer, now);
        }
        let (client, answer) = match self.client(&view, peer) {
            Ok(client) => {
                view.client = client;
                (client, self.verdict(&view, client, now).await)
            }
            Err(bad) => (peer, Answer::Verdict(Verdict::BadRequest(bad))),
        };
        match answer {
            Answer::Verdict(verdict) => {
                let label = verdict.label();
                self.metrics
                    .record(endpoint, label, started.elapsed().as_secs_f64());
                // One line per decision, to check `trusted_proxies` and rules from the log:
                // which address was judged, and why. Never a cookie or token.
                tracing::debug!(
                    %client,
                    %peer,
                    endpoint = endpoint.as_str(),
                    http = ?req.version(),
                    verdict = label.as_str(),
                    reason = %verdict,
                    "decision"
                );
                self.respond(verdict, &view, endpoint)
            }
            Answer::Page(page, mut response) => {
                // nginx turns a 3xx from auth_request into a 500: as for a login verdict, the
                // redirect becomes a 401 with the same Location (and cookies).
                if endpoint == Endpoint::AuthRequest && response.status().is_redirection() {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                tracing::debug!(
                    %client,
                    %peer,
                    endpoint = endpoint.as_str(),
                    page = page.path(),
                    status = response.status().as_u16(),
                    "gate page answered through forward auth"
                );
                response
            }
        }
    }

    /// A decision request from an untrusted peer that carries `X-Forwarded-*` is almost always
    /// Traefik missing from `trusted_proxies`: every request is then judged on Traefik's own
    /// address and path. Count it, and say so in the log at most once a minute.
    fn note_untrusted_forwarding(&self, view: &View<'_>, peer: IpAddr, now: Now) {
        use std::sync::atomic::Ordering;
        let h = view.headers;
        if !(h.contains_key(X_FORWARDED_URI)
            || h.contains_key(X_FORWARDED_HOST)
            || h.contains_key(X_FORWARDED_METHOD))
        {
            return;
        }
        self.metrics.untrusted_forwarded.inc();
        let now = now.unix_secs();
        let last = self.untrusted_warned.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .untrusted_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %peer,
                "X-Forwarded-* from a peer outside server.trusted_proxies was ignored; if this is \
                 your proxy, add it there, or every request is judged on the proxy's own address and path"
            );
        }
    }

    /// Steps 2 to 5 for `client`, or the answer of one of the gate's own pages when the
    /// forwarded request is for one of them.
    async fn verdict(&self, view: &View<'_>, client: IpAddr, now: Now) -> Answer {
        let crowdsec = self.crowdsec(client, now).await;
        // With `key = "user"` the session is needed before the rate limit.
        let mut session = None;
        if let Some(login) = &self.login {
            if self.limiter.keyed_by_user() {
                session = Some(login.session(view, now).await);
            }
        }
        let user = match &session {
            Some(SessionState::Valid { email }) => Some(email.as_ref()),
            _ => None,
        };
        let rate = self.rate(crowdsec, client, user).await;
        let step = decide(crowdsec, rate, &self.rules, &view.forwarded);
        let Some(login) = &self.login else {
            // Without a provider no rule asks for a login and no gate page is recognised
            // (the config loader refuses `login` rules then).
            return Answer::Verdict(match step {
                Step::Done(v) => v,
                Step::NeedsSession | Step::Gate(_) => Verdict::NeedsLogin,
            });
        };
        match step {
            Step::Done(v) => Answer::Verdict(v),
            Step::NeedsSession => {
                let session = match session {
                    Some(s) => s,
                    None => login.session(view, now).await,
                };
                Answer::Verdict(session_verdict(&session, &login.emails))
            }
            Step::Gate(page) => self.gate_page(login, page, view, now).await,
        }
    }

    /// A gate page asked about through `/auth`. Pages that only show information (`/`,
    /// `/oauth2/userinfo`) are let through to the gate's own router; the login and sign-out
    /// steps are answered here, so that a login starts and finishes through `/auth` alone,
    /// whether or not the gate has a router of its own. Every answer given here is a redirect
    /// or an error page, never 2xx: the proxy would forward a 2xx to the upstream instead.
    async fn gate_page(
        &self,
        login: &LoginEndpoints,
        page: GatePage,
        view: &View<'_>,
        now: Now,
    ) -> Answer {
        let query = view.forwarded_query();
        let response = match page {
            GatePage::Home | GatePage::UserInfo => {
                return Answer::Verdict(Verdict::Allow { user: None })
            }
            GatePage::Start => login.start(view, query, now).await,
            GatePage::Callback => login.callback(view, query, now).await,
            GatePage::SignOut if matches!(view.forwarded.method, Some("GET" | "POST")) => {
                login.sign_out(view, query, SignOutVia::ForwardAuth).await
            }
            GatePage::SignOut => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        };
        Answer::Page(page, response)
    }

    /// The one mapping from a verdict to a response: 200 (with the identity headers for a
    /// session) for an allow, and never 2xx for anything else. `view` and `endpoint` shape a
    /// login answer (302 for a browser on `/auth`, 401 with `Location` for nginx).
    pub(crate) fn respond(
        &self,
        verdict: Verdict,
        view: &View<'_>,
        endpoint: Endpoint,
    ) -> Response<Body> {
        match verdict {
            Verdict::Allow { user } => {
                // The proxy never shows an allow answer to the client (it forwards the
                // request instead), so it carries no body and no caching headers: this is
                // the hot path, and every header costs an insert and an encode.
                let mut resp = Response::new(Full::new(Bytes::new()));
                if let Some(user) = user {
                    if let Ok(v) = HeaderValue::from_str(&user) {
                        let h = resp.headers_mut();
                        h.insert(X_AUTH_REQUEST_EMAIL, v.clone());
                        h.insert(X_AUTH_REQUEST_USER, v.clone());
                        h.insert(X_FORWARDED_USER, v);
                    }
                }
                resp
            }
            Verdict::Banned(_) | Verdict::CrowdsecUnavailable | Verdict::Forbidden => {
                plain(StatusCode::FORBIDDEN, "forbidden\n")
            }
            Verdict::ForbiddenUser => plain(
                StatusCode::FORBIDDEN,
                "forbidden: this account is not allowed here\n",
            ),
            Verdict::Limited { retry_after_secs } => {
                let mut resp = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                resp
            }
            Verdict::StoreUnavailable => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "session store unavailable, try again shortly\n",
            ),
            Verdict::NeedsLogin => {
                let location = self.login.as_ref().and_then(|l| l.start_url_for(view));
                match (location, endpoint) {
                    (Some(loc), Endpoint::AuthRequest) => {
                        // nginx turns a 302 from auth_request into a 500: 401 + Location.
                        let mut resp = plain(StatusCode::UNAUTHORIZED, "login required\n");
                        resp.headers_mut().insert(LOCATION, loc);
                        resp
                    }
                    (Some(loc), Endpoint::Auth) if view.browser_navigation() => {
                        let mut resp = plain(StatusCode::FOUND, "login required\n");
                        resp.headers_mut().insert(LOCATION, loc);
                        resp
                    }
                    _ => plain(StatusCode::UNAUTHORIZED, "login required\n"),
                }
            }
            Verdict::BadRequest(_) => plain(StatusCode::BAD_REQUEST, "bad request\n"),
        }
    }
}

/// The value of a header that must appear exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).into_iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

fn single_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    single(headers, name)?
        .to_str()
        .ok()
        .filter(|s| !s.is_empty())
}

/// A short plain-text answer that is never cached.
pub(crate) fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests;

/// The base URL to probe a gate listening on `listen`: wildcard addresses are dialled on
/// loopback.
pub(crate) fn health_base_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}
