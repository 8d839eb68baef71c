//! The decision pipeline (SPEC "The decision on /auth"), as plain functions over plain data.
//!
//! Invariants: steps run in SPEC order — client IP, CrowdSec, rate limit, route policy,
//! session — and the first deny wins; a deny is a [`Verdict`] value, never an error; nothing
//! here does IO or reads a clock (CrowdSec's answer arrives already looked up, and the limiter
//! carries its own injected clock). Missing or malformed forwarded data never yields `Allow`.

use std::net::IpAddr;

use governor::clock::Clock;

use crate::crowdsec::Kind;
use crate::ratelimit::{Limiter, Outcome};
use crate::rules::{normalize_host, normalize_path, PathError, Policy, Rules};

/// What CrowdSec says about the client, already looked up by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdsecState {
    /// The bouncer is not configured.
    Off,
    /// No decision covers the client.
    Clear,
    Decided(Kind),
    /// No trustworthy answer and `fail_closed` is set.
    Unavailable,
}

/// The original request as the proxy describes it. `None` means the value was missing,
/// repeated or not valid text: the route cannot be judged and the answer is 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded<'a> {
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub uri: Option<&'a [u8]>,
}

/// Why a request was refused as malformed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("unparseable X-Forwarded-For entry")]
    ForwardedFor,
    #[error("missing, repeated or invalid X-Forwarded-Method")]
    Method,
    #[error("missing, repeated or invalid X-Forwarded-Host")]
    Host,
    #[error("missing, repeated or invalid X-Forwarded-Uri")]
    Uri,
    #[error("{0}")]
    Path(PathError),
}

/// The answer to one request. Exactly one function in `http` turns it into a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Covered by a CrowdSec decision (403).
    Banned(Kind),
    /// CrowdSec could not be consulted and the config says fail closed (403).
    CrowdsecUnavailable,
    /// Over the rate limit (429).
    Limited {
        retry_after_secs: u64,
    },
    /// A `deny` rule matched (403).
    Forbidden,
    /// The route needs a login and there is no session (302 or 401).
    Login,
    BadRequest(BadRequest),
}

impl Verdict {
    /// The `verdict` label of `jacker_gate_requests_total`.
    pub fn label(&self) -> VerdictLabel {
        match self {
            Verdict::Allow => VerdictLabel::Allow,
            Verdict::Banned(_) => VerdictLabel::Banned,
            Verdict::Limited { .. } => VerdictLabel::Limited,
            Verdict::Forbidden => VerdictLabel::Forbidden,
            Verdict::Login => VerdictLabel::Login,
            Verdict::CrowdsecUnavailable | Verdict::BadRequest(_) => VerdictLabel::Error,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictLabel {
    Allow,
    Login,
    Banned,
    Limited,
    Forbidden,
    Error,
}

impl VerdictLabel {
    pub const ALL: [VerdictLabel; 6] = [
        VerdictLabel::Allow,
        VerdictLabel::Login,
        VerdictLabel::Banned,
        VerdictLabel::Limited,
        VerdictLabel::Forbidden,
        VerdictLabel::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictLabel::Allow => "allow",
            VerdictLabel::Login => "login",
            VerdictLabel::Banned => "banned",
            VerdictLabel::Limited => "limited",
            VerdictLabel::Forbidden => "forbidden",
            VerdictLabel::Error => "error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Steps 2 to 5 for a client whose address step 1 has settled.
pub fn decide<C: Clock + Clone>(
    client: IpAddr,
    crowdsec: CrowdsecState,
    limiter: &Limiter<C>,
    rules: &Rules,
    request: &Forwarded<'_>,
) -> Verdict {
    match crowdsec {
        CrowdsecState::Decided(kind) => return Verdict::Banned(kind),
        CrowdsecState::Unavailable => return Verdict::CrowdsecUnavailable,
        CrowdsecState::Off | CrowdsecState::Clear => {}
    }

    // Without sessions yet, `key = "user"` falls back to the client address, as SPEC says
    // for requests without a session.
    if let Some(key) = limiter.ip_key(client) {
        if let Outcome::Limited { retry_after_secs } = limiter.check(key) {
            return Verdict::Limited { retry_after_secs };
        }
    }

    let Some(method) = request.method else {
        return Verdict::BadRequest(BadRequest::Method);
    };
    let Some(host) = request.host else {
        return Verdict::BadRequest(BadRequest::Host);
    };
    let Some(uri) = request.uri else {
        return Verdict::BadRequest(BadRequest::Uri);
    };
    let path = match normalize_path(uri) {
        Ok(p) => p,
        Err(e) => return Verdict::BadRequest(BadRequest::Path(e)),
    };
    let host = normalize_host(host);
    match rules.policy(method, &host, &path) {
        Policy::Public => Verdict::Allow,
        Policy::Deny => Verdict::Forbidden,
        // Sessions arrive with the login work; until then no request carries one.
        Policy::Login => Verdict::Login,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RateKeyKind, RateLimit};
    use crate::rules::{PathPrefix, Rule};
    use governor::clock::FakeRelativeClock;

    fn limiter(per_second: u32) -> Limiter<FakeRelativeClock> {
        Limiter::with_clock(
            &RateLimit {
                per_second,
                burst: 1,
                key: RateKeyKind::Ip,
                ipv6_prefix: 64,
                exempt: vec![],
            },
            FakeRelativeClock::default(),
        )
    }

    fn rules() -> Rules {
        Rules::new(
            vec![Rule {
                host: None,
                path_prefix: Some(PathPrefix::parse("/admin").unwrap()),
                methods: vec![],
                policy: Policy::Deny,
            }],
            false,
        )
    }

    fn req<'a>(uri: &'a str) -> Forwarded<'a> {
        Forwarded {
            method: Some("GET"),
            host: Some("app.example.com"),
            uri: Some(uri.as_bytes()),
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(1, 2, 3, 4));

    #[test]
    fn order_of_steps() {
        let l = limiter(1);
        let r = rules();
        // A banned client is 403 even with a malformed path.
        assert_eq!(
            decide(
                IP,
                CrowdsecState::Decided(Kind::Captcha),
                &l,
                &r,
                &req("/%zz")
            ),
            Verdict::Banned(Kind::Captcha)
        );
        assert_eq!(
            decide(IP, CrowdsecState::Unavailable, &l, &r, &req("/")),
            Verdict::CrowdsecUnavailable
        );
        assert_eq!(
            decide(IP, CrowdsecState::Clear, &l, &r, &req("/")),
            Verdict::Allow
        );
        // The burst of 1 is spent: limited before the route is even looked at.
        assert!(matches!(
            decide(IP, CrowdsecState::Off, &l, &r, &req("/admin")),
            Verdict::Limited {
                retry_after_secs: 1
            }
        ));
    }

    #[test]
    fn routes_and_bad_input() {
        let l = limiter(0);
        let r = rules();
        let check = |f: Forwarded<'_>| decide(IP, CrowdsecState::Clear, &l, &r, &f);
        assert_eq!(check(req("/admin/x")), Verdict::Forbidden);
        assert_eq!(check(req("/public/../admin")), Verdict::Forbidden);
        assert_eq!(check(req("//admin")), Verdict::Forbidden);
        assert_eq!(check(req("/administrator")), Verdict::Allow);
        assert_eq!(
            check(req("/a%2Fadmin")),
            Verdict::BadRequest(BadRequest::Path(PathError::EncodedSeparator))
        );
        assert_eq!(
            check(Forwarded {
                uri: None,
                ..req("/")
            }),
            Verdict::BadRequest(BadRequest::Uri)
        );
        assert_eq!(
            check(Forwarded {
                host: None,
                ..req("/")
            }),
            Verdict::BadRequest(BadRequest::Host)
        );
        assert_eq!(
            check(Forwarded {
                method: None,
                ..req("/")
            }),
            Verdict::BadRequest(BadRequest::Method)
        );
        let login = Rules::new(vec![], true);
        assert_eq!(
            decide(IP, CrowdsecState::Clear, &l, &login, &req("/")),
            Verdict::Login
        );
    }
}
