//! The HTTP edge: routes, header extraction, and the one place a [`Verdict`] becomes a
//! response.
//!
//! Invariants: only this module knows header names and hyper types; `X-Forwarded-*` is read
//! only from a trusted peer, and only under its exact names (never `X_Forwarded_For`, never
//! `X-Forwarded-Prefix`/`-Port`); a forwarded value that is missing, repeated or not text turns
//! into a 400, never an allow; health paths match exactly.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use crate::client_ip::{client_ip, TrustedProxies};
use crate::crowdsec::lapi::Bouncer;
use crate::decision::{decide, BadRequest, CrowdsecState, Forwarded, Verdict};
use crate::metrics::{Endpoint, Metrics};
use crate::ratelimit::Limiter;
use crate::rules::Rules;

pub type Body = Full<Bytes>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// Everything a request needs, shared by all connections.
pub struct App {
    pub trusted: TrustedProxies,
    pub rules: Rules,
    pub limiter: Limiter,
    pub bouncer: Option<Arc<Bouncer>>,
    pub metrics: Arc<Metrics>,
    pub max_header_bytes: usize,
}

impl App {
    /// Answers one request from `peer` (the TCP peer address).
    pub async fn handle<B>(&self, req: Request<B>, peer: IpAddr) -> Response<Body> {
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
        match req.uri().path() {
            "/auth" => self.decision(&req, peer, Endpoint::Auth).await,
            "/auth-request" => self.decision(&req, peer, Endpoint::AuthRequest).await,
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.bouncer.as_ref().is_none_or(|b| b.ready()) {
                    plain(StatusCode::OK, "ready\n")
                } else {
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: CrowdSec decisions not synced\n",
                    )
                }
            }
            "/metrics" => {
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
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn decision<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
        endpoint: Endpoint,
    ) -> Response<Body> {
        let started = Instant::now();
        let verdict = self.verdict(req, peer).await;
        self.metrics
            .record(endpoint, verdict.label(), started.elapsed().as_secs_f64());
        if let Verdict::BadRequest(why) = verdict {
            tracing::debug!(%peer, reason = %why, "bad forward-auth request");
        }
        respond(verdict)
    }

    async fn verdict<B>(&self, req: &Request<B>, peer: IpAddr) -> Verdict {
        let headers = req.headers();
        let peer = crate::client_ip::canonical(peer);
        let trusted = self.trusted.contains(peer);
        let client = if trusted {
            let lines = headers
                .get_all(X_FORWARDED_FOR)
                .into_iter()
                .map(|v| v.as_bytes());
            match client_ip(peer, lines, &self.trusted) {
                Ok(ip) => ip,
                Err(_) => return Verdict::BadRequest(BadRequest::ForwardedFor),
            }
        } else {
            peer
        };
        let crowdsec = match &self.bouncer {
            Some(b) => b.check(client).await,
            None => CrowdsecState::Off,
        };
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
        decide(client, crowdsec, &self.limiter, &self.rules, &forwarded)
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

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
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

/// The one mapping from a verdict to a response.
pub fn respond(verdict: Verdict) -> Response<Body> {
    match verdict {
        Verdict::Allow => plain(StatusCode::OK, ""),
        Verdict::Banned(_) | Verdict::CrowdsecUnavailable | Verdict::Forbidden => {
            plain(StatusCode::FORBIDDEN, "forbidden\n")
        }
        Verdict::Limited { retry_after_secs } => {
            let mut resp = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            resp
        }
        Verdict::Login => plain(StatusCode::UNAUTHORIZED, "login required\n"),
        Verdict::BadRequest(_) => plain(StatusCode::BAD_REQUEST, "bad request\n"),
    }
}

#[cfg(test)]
mod tests;

/// The base URL to probe a gate listening on `listen`: wildcard addresses are dialled on
/// loopback.
pub fn health_base_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}
