//! The decision pipeline (README, "The decision"), as plain functions over plain data.
//!
//! Invariants: steps run in the documented order — client IP, CrowdSec, rate limit, route policy,
//! session — and the first deny wins; a deny is a [`Verdict`] value, never an error; nothing
//! here does IO or reads a clock (CrowdSec's answer arrives already looked up, and the limiter
//! carries its own injected clock). Missing or malformed forwarded data never yields `Allow`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use governor::clock::Clock;

use crate::crowdsec::table::Remediation;
use crate::oauth::email::EmailPolicy;
use crate::ratelimit::{Limiter, Outcome, RateKey};
use crate::rules::{normalize_host, normalize_path, GatePage, PathError, Policy, Rules};

/// What CrowdSec says about the client, already looked up by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdsecState {
    /// The bouncer is not configured.
    Off,
    /// No decision covers the client.
    Clear,
    /// A decision of this remediation type covers the client.
    Decided(Remediation),
    /// No trustworthy answer and `fail_closed` is set.
    Unavailable,
}

/// What the request's session cookies resolved to, already looked up by the edge: the input of
/// step 5 ([`session_verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// No cookie, or none that verifies, or a session that ended.
    None,
    /// A live session of this (lower-case) email address.
    Valid {
        /// The address the session was created for.
        email: Arc<str>,
    },
    /// The store did not answer and no recent validation is cached.
    StoreUnavailable,
}

/// The original request as the proxy describes it. `None` means the value was missing,
/// repeated or not valid text: the route cannot be judged and the answer is 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded<'a> {
    /// `X-Forwarded-Method`, e.g. `GET`.
    pub method: Option<&'a str>,
    /// `X-Forwarded-Host`, as sent (any case, maybe with a port or a trailing dot).
    pub host: Option<&'a str>,
    /// `X-Forwarded-Uri`: the request target, path and query, as raw bytes.
    pub uri: Option<&'a [u8]>,
}

/// Why a request was refused as malformed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// `X-Forwarded-For` holds an entry that is not an address.
    #[error("unparseable X-Forwarded-For entry")]
    ForwardedFor,
    /// `X-Forwarded-Method` is missing, repeated or not text.
    #[error("missing, repeated or invalid X-Forwarded-Method")]
    Method,
    /// `X-Forwarded-Host` is missing, repeated, not text or not a host name.
    #[error("missing, repeated or invalid X-Forwarded-Host")]
    Host,
    /// `X-Forwarded-Uri` is missing, repeated or not text.
    #[error("missing, repeated or invalid X-Forwarded-Uri")]
    Uri,
    /// The path is one the rules refuse to judge (an encoded separator, a `..` above the root).
    #[error("{0}")]
    Path(PathError),
}

/// The answer to one request. Exactly one function in `http` turns it into a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 200; with the signed-in user on `login` routes (identity headers).
    Allow {
        /// The session's email address; `None` on public routes.
        user: Option<Arc<str>>,
    },
    /// Covered by a CrowdSec decision of this remediation type (403).
    Banned(Remediation),
    /// CrowdSec could not be consulted and the config says fail closed (403).
    CrowdsecUnavailable,
    /// Over the rate limit (429).
    Limited {
        /// Seconds until the next request would pass (`Retry-After`), at least 1.
        retry_after_secs: u64,
    },
    /// A `deny` rule matched (403).
    Forbidden,
    /// The route needs a login and there is no session (302 to the login, or 401).
    NeedsLogin,
    /// A session whose email the policy does not (or no longer) allow (403).
    ForbiddenUser,
    /// The session store did not answer and no recent validation is cached (503).
    StoreUnavailable,
    /// The forwarded request cannot be judged (400).
    BadRequest(BadRequest),
}

impl Verdict {
    /// The `verdict` label of `jacker_gate_requests_total`.
    pub fn label(&self) -> VerdictLabel {
        match self {
            Verdict::Allow { .. } => VerdictLabel::Allow,
            Verdict::Banned(_) => VerdictLabel::Banned,
            Verdict::Limited { .. } => VerdictLabel::Limited,
            Verdict::Forbidden | Verdict::ForbiddenUser => VerdictLabel::Forbidden,
            Verdict::NeedsLogin => VerdictLabel::Login,
            Verdict::CrowdsecUnavailable | Verdict::StoreUnavailable | Verdict::BadRequest(_) => {
                VerdictLabel::Error
            }
        }
    }
}

/// The reason for a verdict, for the per-decision debug log line. Names no secret: never a
/// cookie, token or session id.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allow { user: None } => f.write_str("no login needed"),
            Verdict::Allow { user: Some(_) } => f.write_str("valid session, email allowed"),
            Verdict::Banned(kind) => write!(f, "CrowdSec decision {}", kind.as_str()),
            Verdict::CrowdsecUnavailable => {
                f.write_str("CrowdSec not synced within max_staleness and fail_closed is set")
            }
            Verdict::Limited { .. } => f.write_str("over the rate limit"),
            Verdict::Forbidden => f.write_str("a deny rule matched"),
            Verdict::NeedsLogin => f.write_str("login route without a session"),
            Verdict::ForbiddenUser => f.write_str("the session's email is not allowed"),
            Verdict::StoreUnavailable => f.write_str("session store unavailable"),
            Verdict::BadRequest(why) => write!(f, "bad request: {why}"),
        }
    }
}

/// The `verdict` label of `jacker_gate_requests_total`: verdicts grouped as README's metric
/// table documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictLabel {
    /// `allow`: 200.
    Allow,
    /// `login`: no session on a `login` route.
    Login,
    /// `banned`: a CrowdSec decision.
    Banned,
    /// `limited`: over the rate limit.
    Limited,
    /// `forbidden`: a deny rule or a disallowed session email.
    Forbidden,
    /// `error`: 400, or a peer (CrowdSec fail-closed, the session store) unavailable.
    Error,
}

impl VerdictLabel {
    /// Every label, in [`VerdictLabel::index`] order.
    pub const ALL: [VerdictLabel; 6] = [
        VerdictLabel::Allow,
        VerdictLabel::Login,
        VerdictLabel::Banned,
        VerdictLabel::Limited,
        VerdictLabel::Forbidden,
        VerdictLabel::Error,
    ];

    /// The label value as exported.
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

    /// The position in [`VerdictLabel::ALL`], for arrays of pre-resolved counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where steps 2 to 4 leave a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Settled without a session: a deny, or a public route.
    Done(Verdict),
    /// A `login` route: step 5 needs the session ([`session_verdict`]).
    NeedsSession,
    /// One of the gate's own pages arriving through ForwardAuth (`X-Forwarded-Uri` names it):
    /// the edge answers it, before any rule, so a `login` rule cannot send a login page to a
    /// login (a redirect loop).
    Gate(GatePage),
}

impl CrowdsecState {
    /// Whether step 2 lets the request on to the rate limit: a denied request spends no token.
    pub fn passes(self) -> bool {
        matches!(self, CrowdsecState::Off | CrowdsecState::Clear)
    }
}

/// The rate-limit bucket of a request: the signed-in user's when the limiter is keyed by user
/// and `user` is known, else the client address's; `None` for an exempt address. The edge
/// takes one token from it (locally or in the shared store) when [`CrowdsecState::passes`].
pub fn rate_key<C: Clock + Clone>(
    client: IpAddr,
    limiter: &Limiter<C>,
    user: Option<&str>,
) -> Option<RateKey> {
    if !limiter.enabled() {
        return None;
    }
    // `key = "user"` falls back to the client address without a session.
    match user {
        Some(u) if limiter.keyed_by_user() => Some(limiter.user_key(u)),
        _ => limiter.ip_key(client),
    }
}

/// Steps 2 and 3 (CrowdSec, rate limit), shared by `/auth` and the login endpoints: the deny
/// when one applies, `None` when the request may go on. `rate` is the limiter's outcome for the
/// request's [`rate_key`], taken by the edge (`Allowed` when CrowdSec already denies).
pub fn admit(crowdsec: CrowdsecState, rate: Outcome) -> Option<Verdict> {
    match crowdsec {
        CrowdsecState::Decided(kind) => return Some(Verdict::Banned(kind)),
        CrowdsecState::Unavailable => return Some(Verdict::CrowdsecUnavailable),
        CrowdsecState::Off | CrowdsecState::Clear => {}
    }
    match rate {
        Outcome::Limited { retry_after_secs } => Some(Verdict::Limited { retry_after_secs }),
        Outcome::Allowed => None,
    }
}

/// Steps 2 to 4 for a client whose address step 1 has settled: CrowdSec, the rate limit, then
/// the route. A deny, or a route the rules settle on their own, is [`Step::Done`]; a `login`
/// route is [`Step::NeedsSession`]; one of the gate's own pages is [`Step::Gate`].
pub fn decide(
    crowdsec: CrowdsecState,
    rate: Outcome,
    rules: &Rules,
    request: &Forwarded<'_>,
) -> Step {
    if let Some(v) = admit(crowdsec, rate) {
        return Step::Done(v);
    }
    let (method, host, path) = match route_of(request) {
        Ok(route) => route,
        Err(why) => return Step::Done(Verdict::BadRequest(why)),
    };
    if let Some(page) = rules.gate_page(method, &host, &path) {
        return Step::Gate(page);
    }
    match rules.policy(method, &host, &path) {
        Policy::Public => Step::Done(Verdict::Allow { user: None }),
        Policy::Deny => Step::Done(Verdict::Forbidden),
        Policy::Login => Step::NeedsSession,
    }
}

/// The method, normalised host and normalised path the route rules judge, or why the
/// forwarded request cannot be judged.
fn route_of<'a>(
    request: &Forwarded<'a>,
) -> Result<(&'a str, Cow<'a, str>, Cow<'a, str>), BadRequest> {
    let method = request.method.ok_or(BadRequest::Method)?;
    let host = request.host.ok_or(BadRequest::Host)?;
    let uri = request.uri.ok_or(BadRequest::Uri)?;
    let path = normalize_path(uri).map_err(BadRequest::Path)?;
    let host = normalize_host(host).ok_or(BadRequest::Host)?;
    Ok((method, host, path))
}

/// Step 5: the session of a `login` route, judged against the email policy (which may have
/// changed since the session began).
pub fn session_verdict(session: &SessionState, policy: &EmailPolicy) -> Verdict {
    match session {
        SessionState::Valid { email } if policy.allows_session(email) => Verdict::Allow {
            user: Some(email.clone()),
        },
        SessionState::Valid { .. } => Verdict::ForbiddenUser,
        SessionState::None => Verdict::NeedsLogin,
        SessionState::StoreUnavailable => Verdict::StoreUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{RateKeyKind, RateLimit};
    use crate::rules::{GatePages, PathPrefix, Rule};
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

    /// Steps 2 to 4 as the edge runs them with the local limiter.
    fn decide_on<C: Clock + Clone>(
        client: IpAddr,
        crowdsec: CrowdsecState,
        limiter: &Limiter<C>,
        rules: &Rules,
        request: &Forwarded<'_>,
        user: Option<&str>,
    ) -> Step {
        let rate = match rate_key(client, limiter, user) {
            Some(k) if crowdsec.passes() => limiter.check(k),
            _ => Outcome::Allowed,
        };
        decide(crowdsec, rate, rules, request)
    }

    #[test]
    fn order_of_steps() {
        let l = limiter(1);
        let r = rules();
        let run = |cs, uri| decide_on(IP, cs, &l, &r, &req(uri), None);
        // A banned client is 403 even with a malformed path.
        assert_eq!(
            run(CrowdsecState::Decided(Remediation::Captcha), "/%zz"),
            Step::Done(Verdict::Banned(Remediation::Captcha))
        );
        assert_eq!(
            run(CrowdsecState::Unavailable, "/"),
            Step::Done(Verdict::CrowdsecUnavailable)
        );
        assert_eq!(
            run(CrowdsecState::Clear, "/"),
            Step::Done(Verdict::Allow { user: None })
        );
        // The burst of 1 is spent: limited before the route is even looked at.
        assert_eq!(
            run(CrowdsecState::Off, "/admin"),
            Step::Done(Verdict::Limited {
                retry_after_secs: 1
            })
        );
    }

    #[test]
    fn routes_and_bad_input() {
        let l = limiter(0);
        let r = rules();
        let check = |f: Forwarded<'_>| match decide_on(IP, CrowdsecState::Clear, &l, &r, &f, None) {
            Step::Done(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(check(req("/admin/x")), Verdict::Forbidden);
        assert_eq!(check(req("/public/../admin")), Verdict::Forbidden);
        assert_eq!(check(req("//admin")), Verdict::Forbidden);
        assert_eq!(check(req("/administrator")), Verdict::Allow { user: None });
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
        // Without login the callback path is just a path.
        assert_eq!(
            check(req("/oauth2/callback")),
            Verdict::Allow { user: None }
        );
        let login = Rules::new(vec![], true);
        let run = |uri| decide_on(IP, CrowdsecState::Clear, &l, &login, &req(uri), None);
        assert_eq!(run("/"), Step::NeedsSession);
        let callback = Step::Gate(GatePage::Callback);
        assert_eq!(run("/oauth2/callback?code=x&state=y"), callback);
        assert_eq!(run("/x/../oauth2/callback"), callback);
        // Without a public URL only the callback is known: `/oauth2/start` is an app's path.
        assert_eq!(run("/oauth2/start"), Step::NeedsSession);
    }

    /// The gate's own pages are recognised in every spelling the path rules read as the same
    /// path, only on `public_url`'s host (the callback on every host), and under its prefix.
    #[test]
    fn gate_pages() {
        let l = limiter(0);
        let at_with = |method: &str, public_host: &str, prefix: &str, host: &str, uri: &str| {
            let rules = Rules::new(vec![], true)
                .with_gate_pages(GatePages::new(public_host, prefix).expect("valid"));
            let f = Forwarded {
                method: Some(method),
                host: Some(host),
                uri: Some(uri.as_bytes()),
            };
            decide_on(IP, CrowdsecState::Clear, &l, &rules, &f, None)
        };
        let at = |public_host: &str, prefix: &str, host: &str, uri: &str| {
            at_with("GET", public_host, prefix, host, uri)
        };
        let auth = |uri| at("auth.example.com", "/", "auth.example.com", uri);
        for (uri, page) in [
            ("/", GatePage::Home),
            ("/?x=1", GatePage::Home),
            (
                "/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2F",
                GatePage::Start,
            ),
            ("//oauth2//start", GatePage::Start),
            ("/x/../oauth2/./start", GatePage::Start),
            ("/oauth2/%73tart", GatePage::Start),
            ("/oauth2/callback?code=c&state=s", GatePage::Callback),
            ("/oauth2/sign_out", GatePage::SignOut),
            ("/oauth2/userinfo", GatePage::UserInfo),
        ] {
            assert_eq!(auth(uri), Step::Gate(page), "{uri}");
        }
        // Not a gate page: the rules decide (login by default).
        for uri in [
            "/oauth2/start/",
            "/oauth2/startx",
            "/oauth2",
            "/OAUTH2/start",
            "/x",
        ] {
            assert_eq!(auth(uri), Step::NeedsSession, "{uri}");
        }
        // Host spellings of the public host.
        for host in [
            "AUTH.example.com",
            "auth.example.com.",
            "auth.example.com:8443",
        ] {
            assert_eq!(
                at("auth.example.com", "/", host, "/oauth2/start"),
                Step::Gate(GatePage::Start),
                "{host}"
            );
        }
        // On another host only the callback belongs to the gate.
        let app = |uri| at("auth.example.com", "/", "app.example.com", uri);
        assert_eq!(app("/"), Step::NeedsSession);
        assert_eq!(app("/oauth2/start"), Step::NeedsSession);
        assert_eq!(app("/oauth2/callback"), Step::Gate(GatePage::Callback));
        // Under a path prefix.
        let pre = |uri| at("example.com", "/gate/", "example.com", uri);
        assert_eq!(pre("/gate/oauth2/start"), Step::Gate(GatePage::Start));
        assert_eq!(pre("/gate/"), Step::Gate(GatePage::Home));
        // Without its slash the prefix is a path a proxy may route to an application.
        assert_eq!(pre("/gate"), Step::NeedsSession);
        // The pages that only show information are let through for GET and HEAD only.
        for method in ["POST", "PUT", "DELETE"] {
            for uri in ["/", "/oauth2/userinfo"] {
                let step = at_with(method, "auth.example.com", "/", "auth.example.com", uri);
                assert_eq!(step, Step::NeedsSession, "{method} {uri}");
            }
        }
        let head = at_with("HEAD", "auth.example.com", "/", "auth.example.com", "/");
        assert_eq!(head, Step::Gate(GatePage::Home));
        let post = at_with(
            "POST",
            "auth.example.com",
            "/",
            "auth.example.com",
            "/oauth2/sign_out",
        );
        assert_eq!(post, Step::Gate(GatePage::SignOut));
        assert_eq!(pre("/oauth2/start"), Step::NeedsSession);
        assert_eq!(pre("/"), Step::NeedsSession);
        assert_eq!(pre("/gatex/oauth2/start"), Step::NeedsSession);
        // A path the rules refuse stays refused.
        assert_eq!(
            auth("/oauth2/start;x"),
            Step::Done(Verdict::BadRequest(BadRequest::Path(PathError::Semicolon)))
        );
    }

    #[test]
    fn user_keyed_limit() {
        let l = Limiter::with_clock(
            &RateLimit {
                per_second: 1,
                burst: 1,
                key: RateKeyKind::User,
                ipv6_prefix: 64,
                exempt: vec![],
            },
            FakeRelativeClock::default(),
        );
        let admit = |_: IpAddr, cs: CrowdsecState, l: &Limiter<_>, user: Option<&str>| {
            let rate = rate_key(IP, l, user).map_or(Outcome::Allowed, |k| l.check(k));
            admit(cs, rate)
        };
        assert_eq!(
            admit(IP, CrowdsecState::Off, &l, Some("a@example.com")),
            None
        );
        // Same IP, another user: a bucket of its own.
        assert_eq!(
            admit(IP, CrowdsecState::Off, &l, Some("b@example.com")),
            None
        );
        // Without a session the IP bucket is used, also fresh.
        assert_eq!(admit(IP, CrowdsecState::Off, &l, None), None);
        assert!(matches!(
            admit(IP, CrowdsecState::Off, &l, Some("a@example.com")),
            Some(Verdict::Limited { .. })
        ));
    }

    #[test]
    fn session_step() {
        let policy = EmailPolicy::new(
            &[crate::domain::DomainName::parse("example.com").unwrap()],
            &[],
            true,
        );
        let valid = |e: &str| SessionState::Valid { email: e.into() };
        assert_eq!(
            session_verdict(&valid("alice@example.com"), &policy),
            Verdict::Allow {
                user: Some("alice@example.com".into())
            }
        );
        assert_eq!(
            session_verdict(&valid("mallory@evil.com"), &policy),
            Verdict::ForbiddenUser
        );
        assert_eq!(
            session_verdict(&SessionState::None, &policy),
            Verdict::NeedsLogin
        );
        assert_eq!(
            session_verdict(&SessionState::StoreUnavailable, &policy),
            Verdict::StoreUnavailable
        );
    }
}
