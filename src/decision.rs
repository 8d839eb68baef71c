//! The decision pipeline (SPEC "The decision on /auth"), as plain functions over plain data.
//!
//! Invariants: steps run in SPEC order — client IP, CrowdSec, rate limit, route policy,
//! session — and the first deny wins; a deny is a [`Verdict`] value, never an error; nothing
//! here does IO or reads a clock (CrowdSec's answer arrives already looked up, and the limiter
//! carries its own injected clock). Missing or malformed forwarded data never yields `Allow`.

use std::net::IpAddr;

use governor::clock::Clock;

use std::sync::Arc;

use crate::crowdsec::table::Remediation;
use crate::oauth::email::EmailPolicy;
use crate::ratelimit::{Limiter, Outcome};
use crate::rules::{normalize_host, normalize_path, GatePage, PathError, Policy, Rules};
use crate::session::SessionState;

/// What CrowdSec says about the client, already looked up by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdsecState {
    /// The bouncer is not configured.
    Off,
    /// No decision covers the client.
    Clear,
    Decided(Remediation),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 200; with the signed-in user on `login` routes (identity headers).
    Allow {
        user: Option<Arc<str>>,
    },
    /// Covered by a CrowdSec decision (403).
    Banned(Remediation),
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
    /// A session whose email the policy does not (or no longer) allow (403).
    ForbiddenUser,
    /// The session store did not answer and no recent validation is cached (503).
    StoreUnavailable,
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
            Verdict::Login => VerdictLabel::Login,
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
            Verdict::Login => f.write_str("login route without a session"),
            Verdict::ForbiddenUser => f.write_str("the session's email is not allowed"),
            Verdict::StoreUnavailable => f.write_str("session store unavailable"),
            Verdict::BadRequest(why) => write!(f, "bad request: {why}"),
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

/// Where steps 2 to 4 leave a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Verdict),
    /// A `login` route: step 5 needs the session ([`session_verdict`]).
    NeedsSession,
    /// One of the gate's own pages arriving through ForwardAuth (`X-Forwarded-Uri` names it):
    /// the edge answers it, before any rule, so a `login` rule cannot send a login page to a
    /// login (a redirect loop).
    Gate(GatePage),
}

/// Steps 2 and 3 (CrowdSec, rate limit), shared by `/auth` and the login endpoints. `user`
/// is the signed-in user when the limiter is keyed by user and a session was found.
pub fn admit<C: Clock + Clone>(
    client: IpAddr,
    crowdsec: CrowdsecState,
    limiter: &Limiter<C>,
    user: Option<&str>,
) -> Option<Verdict> {
    match crowdsec {
        CrowdsecState::Decided(kind) => return Some(Verdict::Banned(kind)),
        CrowdsecState::Unavailable => return Some(Verdict::CrowdsecUnavailable),
        CrowdsecState::Off | CrowdsecState::Clear => {}
    }
    // `key = "user"` falls back to the client address without a session.
    let key = match user {
        Some(u) if limiter.keyed_by_user() => Some(limiter.user_key(u)),
        _ => limiter.ip_key(client),
    };
    if let Some(key) = key {
        if let Outcome::Limited { retry_after_secs } = limiter.check(key) {
            return Some(Verdict::Limited { retry_after_secs });
        }
    }
    None
}

/// Steps 2 to 4 for a client whose address step 1 has settled.
pub fn decide<C: Clock + Clone>(
    client: IpAddr,
    crowdsec: CrowdsecState,
    limiter: &Limiter<C>,
    rules: &Rules,
    request: &Forwarded<'_>,
    user: Option<&str>,
) -> Step {
    match decide_route(client, crowdsec, limiter, rules, request, user) {
        Ok(step) => step,
        Err(v) => Step::Done(v),
    }
}

fn decide_route<C: Clock + Clone>(
    client: IpAddr,
    crowdsec: CrowdsecState,
    limiter: &Limiter<C>,
    rules: &Rules,
    request: &Forwarded<'_>,
    user: Option<&str>,
) -> Result<Step, Verdict> {
    if let Some(v) = admit(client, crowdsec, limiter, user) {
        return Err(v);
    }

    let method = request
        .method
        .ok_or(Verdict::BadRequest(BadRequest::Method))?;
    let host = request.host.ok_or(Verdict::BadRequest(BadRequest::Host))?;
    let uri = request.uri.ok_or(Verdict::BadRequest(BadRequest::Uri))?;
    let path = normalize_path(uri).map_err(|e| Verdict::BadRequest(BadRequest::Path(e)))?;
    let host = normalize_host(host).ok_or(Verdict::BadRequest(BadRequest::Host))?;
    if let Some(page) = rules.gate_page(method, &host, &path) {
        return Ok(Step::Gate(page));
    }
    match rules.policy(method, &host, &path) {
        Policy::Public => Err(Verdict::Allow { user: None }),
        Policy::Deny => Err(Verdict::Forbidden),
        Policy::Login => Ok(Step::NeedsSession),
    }
}

/// Step 5: the session of a `login` route.
pub fn session_verdict(session: &SessionState, policy: &EmailPolicy) -> Verdict {
    match session {
        SessionState::Valid { email } if policy.allows_session(email) => Verdict::Allow {
            user: Some(email.clone()),
        },
        SessionState::Valid { .. } => Verdict::ForbiddenUser,
        SessionState::None => Verdict::Login,
        SessionState::StoreUnavailable => Verdict::StoreUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RateKeyKind, RateLimit};
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

    #[test]
    fn order_of_steps() {
        let l = limiter(1);
        let r = rules();
        let run = |cs, uri| decide(IP, cs, &l, &r, &req(uri), None);
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
        let check = |f: Forwarded<'_>| match decide(IP, CrowdsecState::Clear, &l, &r, &f, None) {
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
        let run = |uri| decide(IP, CrowdsecState::Clear, &l, &login, &req(uri), None);
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
            decide(IP, CrowdsecState::Clear, &l, &rules, &f, None)
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
            Verdict::Login
        );
        assert_eq!(
            session_verdict(&SessionState::StoreUnavailable, &policy),
            Verdict::StoreUnavailable
        );
    }
}
