//! Route policy: `[[rules]]` matched by host, path prefix and method, first match wins.
//!
//! Invariant: the path a rule sees is the one the upstream will serve — query and fragment
//! dropped, percent-decoded, `//` merged, `.`/`..` resolved, in that order — and any path that
//! could be read two ways (`%2F`, `%5C`, `%00`, `\`, bad escapes, invalid UTF-8, escaping `/`) is
//! refused instead of guessed at.

use std::borrow::Cow;
use std::fmt;

use crate::domain::{is_below, is_host_name};

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// 200 without a login.
    Public,
    /// A valid session is needed (step 5).
    Login,
    /// 403.
    Deny,
}

/// A rule's host: exact, or `*.example.com`, whose match is on a label boundary and never
/// matches `example.com` itself or `evilexample.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One host, lower case.
    Exact(String),
    /// Every subdomain of this name (lower case, no leading dot), at any depth.
    Subdomains(String),
}

impl HostPattern {
    /// Parses `app.example.com` or `*.example.com` (any case, one trailing dot allowed).
    ///
    /// # Errors
    /// [`RuleError::NotAHost`]: a port, a scheme, an empty or over-long label.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (pattern, name) = match lower.strip_prefix("*.") {
            Some(rest) => (HostPattern::Subdomains(rest.to_owned()), rest),
            None => (HostPattern::Exact(lower.to_owned()), lower),
        };
        if is_host_name(name) {
            Ok(pattern)
        } else {
            Err(RuleError::NotAHost(text.to_owned()))
        }
    }

    /// `host` must already be normalised by [`normalize_host`].
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(name) => is_below(host, name),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
        }
    }
}

/// A normalised path prefix without a trailing `/` (except the root itself), and the text it
/// was written as (printed back by `check-config`: printing the decoded form would decode it a
/// second time on the next load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    normal: String,
    raw: String,
}

/// Why a rule's `host` or `path_prefix` was refused; each holds the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Not a host name or `*.domain` pattern.
    #[error("not a host name or *.domain pattern (no port, no scheme): {0:?}")]
    NotAHost(String),
    /// Not an absolute path, or it carries a query or fragment.
    #[error("must be a path starting with / (no query or fragment): {0:?}")]
    NotAPath(String),
    /// A path requests could not match, for the reason the request path would be refused.
    #[error("invalid path prefix {0:?}: {1}")]
    BadPath(String, PathError),
}

impl PathPrefix {
    /// Parses a prefix as written in `[[rules]]`, normalised as request paths are.
    ///
    /// # Errors
    /// [`RuleError::NotAPath`] or [`RuleError::BadPath`].
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        if !text.starts_with('/') || text.contains(['?', '#']) {
            return Err(RuleError::NotAPath(text.to_owned()));
        }
        let normal =
            normalize_path(text.as_bytes()).map_err(|e| RuleError::BadPath(text.to_owned(), e))?;
        let trimmed = normal.trim_end_matches('/');
        Ok(PathPrefix {
            normal: if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            },
            raw: text.to_owned(),
        })
    }

    /// The normalised prefix that requests are matched against.
    pub fn as_str(&self) -> &str {
        &self.normal
    }

    /// The prefix as written in the config.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Segment-prefix match: `/admin` matches `/admin` and `/admin/x`, not `/administrator`.
    pub fn matches(&self, path: &str) -> bool {
        let p = self.normal.as_str();
        if p == "/" {
            return true;
        }
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// One `[[rules]]` entry; an omitted key matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The request host it applies to.
    pub host: Option<HostPattern>,
    /// The path prefix, on segment boundaries.
    pub path_prefix: Option<PathPrefix>,
    /// Upper-case method names; empty matches every method.
    pub methods: Vec<String>,
    /// What it decides.
    pub policy: Policy,
}

impl Rule {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(host))
            && self.path_prefix.as_ref().is_none_or(|p| p.matches(path))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| {
                    // HEAD is served by the GET handler almost everywhere: a rule for GET
                    // covers it, or `deny GET /x` would leak the same response to HEAD.
                    m.eq_ignore_ascii_case(method)
                        || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
                }))
    }
}

/// One of the gate's own pages, as `/auth` recognises it in `X-Forwarded-Uri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatePage {
    /// `/`: who is signed in.
    Home,
    /// `/oauth2/start`
    Start,
    /// `/oauth2/callback`
    Callback,
    /// `/oauth2/sign_out`
    SignOut,
    /// `/oauth2/userinfo`
    UserInfo,
}

impl GatePage {
    /// The page's path below `public_url`'s path.
    pub fn path(self) -> &'static str {
        match self {
            GatePage::Home => "/",
            GatePage::Start => "/oauth2/start",
            GatePage::Callback => "/oauth2/callback",
            GatePage::SignOut => "/oauth2/sign_out",
            GatePage::UserInfo => "/oauth2/userinfo",
        }
    }

    const ALL: [GatePage; 5] = [
        GatePage::Home,
        GatePage::Start,
        GatePage::Callback,
        GatePage::SignOut,
        GatePage::UserInfo,
    ];
}

/// Where the gate's own pages live: `/` and `/oauth2/*` under `server.public_url` (its host and
/// path). Users put the forwardAuth middleware on the gate's own router, on the whole entrypoint,
/// or give the gate no router at all; `/auth` must then recognise these pages, or it answers
/// them with a login redirect to themselves (a loop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatePages {
    /// `public_url`'s host, normalised like a request host; `None`: only the callback is known.
    host: Option<String>,
    /// `public_url`'s path without its trailing `/` (empty at the root).
    prefix: String,
}

impl GatePages {
    /// The pages under a public URL with this host (`auth.example.com`, any case, no port) and
    /// path (`/` or a prefix such as `/gate/`). `None` when the host is not a valid host name.
    pub fn new(host: &str, path: &str) -> Option<Self> {
        let host = normalize_host(host)?.into_owned();
        let prefix = normalize_path(path.as_bytes()).ok()?;
        Some(GatePages {
            host: Some(host),
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    /// The normalised path of `page` (e.g. `/gate/oauth2/start`).
    pub fn path_of(&self, page: GatePage) -> String {
        format!("{}{}", self.prefix, page.path())
    }

    /// Which gate page a request is for. `host` and `path` are normalised ([`normalize_host`],
    /// [`normalize_path`]). The callback is recognised on every host (a provider returns to the
    /// one registered URL, but a proxy may present it under another name); the other pages only
    /// on `public_url`'s host, where they cannot shadow an application's own `/`.
    ///
    /// `/` and `/oauth2/userinfo` only show information and are let through to the gate's own
    /// router: they count as gate pages for `GET` and `HEAD` only, and only spelled exactly
    /// (`{prefix}/`, not `{prefix}`, which a proxy may route to an application), so that no
    /// other request can use them to reach an upstream unjudged.
    pub fn page(&self, method: &str, host: &str, path: &str) -> Option<GatePage> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        let page = GatePage::ALL.into_iter().find(|p| rest == p.path())?;
        let shows_only = matches!(page, GatePage::Home | GatePage::UserInfo);
        if shows_only && !matches!(method, "GET" | "HEAD") {
            return None;
        }
        if page == GatePage::Callback || self.host.as_deref() == Some(host) {
            Some(page)
        } else {
            None
        }
    }
}

/// The ordered rule list and the policy for requests no rule matches.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    fallback: Policy,
    /// With a login provider: the gate's own pages, answered before any rule.
    gate: Option<GatePages>,
}

impl Rules {
    /// `login_available`: with a provider configured, unmatched routes need a login; without
    /// one they are public. With a provider, `/oauth2/callback` is recognised on every host until
    /// [`Rules::with_gate_pages`] gives the public URL.
    pub fn new(rules: Vec<Rule>, login_available: bool) -> Self {
        Self {
            rules,
            fallback: if login_available {
                Policy::Login
            } else {
                Policy::Public
            },
            gate: login_available.then(GatePages::default),
        }
    }

    /// Recognises the gate's own pages under `public_url` (only with a provider).
    pub fn with_gate_pages(mut self, pages: GatePages) -> Self {
        if self.gate.is_some() {
            self.gate = Some(pages);
        }
        self
    }

    /// Which of the gate's own pages a request is for (normalised host and path).
    pub fn gate_page(&self, method: &str, host: &str, path: &str) -> Option<GatePage> {
        self.gate.as_ref()?.page(method, host, path)
    }

    /// Whether a login provider is configured (unmatched routes then need a login).
    pub fn login_available(&self) -> bool {
        self.fallback == Policy::Login
    }

    /// The policy of the first rule matching `method`, `host` (normalised) and `path`
    /// (normalised), or the fallback: `login` with a provider, else `public`.
    pub fn policy(&self, method: &str, host: &str, path: &str) -> Policy {
        self.rules
            .iter()
            .find(|r| r.matches(method, host, path))
            .map_or(self.fallback, |r| r.policy)
    }
}

/// Validates a Host value and returns it lower-cased, without its port and one trailing dot.
/// IPv6 literals keep their brackets (`[::1]`). `None` for anything a proxy could read another
/// way: a non-numeric port (`admin.example.com:abc` is still `admin.example.com` to Go's
/// `SplitHostPort`), empty labels, or bytes outside letters, digits, `.`, `-` and `_`.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    fn port_ok(p: &str) -> bool {
        (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)) {
            return None;
        }
        let host = &raw[..=inside.len() + 1];
        return Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        });
    }
    let host = match raw.rsplit_once(':') {
        Some((h, p)) if port_ok(p) => h,
        Some(_) => return None,
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !is_host_name(host) {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Why a request path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape")]
    BadEscape,
    /// `%2F`, `%5C` or `%00`: upstreams disagree on whether it separates segments.
    #[error("encoded /, \\ or NUL")]
    EncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    #[error("backslash in path")]
    Backslash,
    /// A raw control byte, space, `#`, `"`, `<`, `>`, `^`, `` ` ``, `{`, `|` or `}`.
    #[error("a byte that has no place in a request target (control, space, #, quote, <>^`{{|}})")]
    InvalidByte,
    /// A `;`: path parameters (`/x/..;/admin`) are read differently by Java servers.
    #[error("semicolon (path parameter) in path")]
    Semicolon,
    /// An encoded control character.
    #[error("encoded control character in path")]
    ControlChar,
    /// A `..` that would remove an empty segment (`/x//../admin`).
    #[error("`..` after an empty segment: proxies and servers resolve it differently")]
    Ambiguous,
    /// Bytes that are not UTF-8 once decoded.
    #[error("path is not UTF-8 after decoding")]
    NotUtf8,
    /// More `..` than segments.
    #[error("path escapes /")]
    Escapes,
}

/// Normalises the path of a request target as step 4 of the decision says (README "The decision"). Borrows when nothing changes,
/// which is the common case on the hot path.
pub fn normalize_path(target: &[u8]) -> Result<Cow<'_, str>, PathError> {
    // A request target never holds a raw `#`, a control byte or a space; nginx's $request_uri
    // can pass them through, and an upstream may read `/public#/../admin` as /admin.
    if target.iter().any(|&b| b == b'#' || b <= b' ' || b == 0x7f) {
        return Err(PathError::InvalidByte);
    }
    let end = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let raw = &target[..end];
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    // `;` starts path parameters that Tomcat, Jetty and Spring strip (`/x/..;/admin`).
    if raw.contains(&b';') {
        return Err(PathError::Semicolon);
    }
    if raw.iter().any(|b| b"\"<>^`{|}".contains(b)) {
        return Err(PathError::InvalidByte);
    }
    let needs_work = raw.contains(&b'%') || raw.windows(2).any(|w| w == b"//" || w == b"/.");
    if !needs_work {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| PathError::NotUtf8);
    }

    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).and_then(|c| hex(*c));
            let lo = raw.get(i + 2).and_then(|c| hex(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let byte = hi << 4 | lo;
            match byte {
                b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                b';' => return Err(PathError::Semicolon),
                c if c < b' ' || c == 0x7f => return Err(PathError::ControlChar),
                _ => {}
            }
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;

    // Split on '/', skipping empty segments (merges "//"), then resolve dot segments. A
    // trailing '/' (or a trailing dot segment) is kept, as the upstream would see it.
    // `rfc` mirrors RFC 3986 resolution, which keeps empty segments: where `..` would remove
    // an empty one, the two readings differ (`/admin//..` is `/admin/` there, `/` here), so the
    // path is refused rather than guessed.
    let mut out: Vec<&str> = Vec::new();
    let mut rfc: Vec<bool> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (idx, seg) in segments.iter().enumerate() {
        match *seg {
            "" => {
                if idx == last {
                    trailing_slash = true;
                } else {
                    rfc.push(true);
                }
            }
            "." => trailing_slash = idx == last,
            ".." => {
                if rfc.last() == Some(&true) {
                    return Err(PathError::Ambiguous);
                }
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
                rfc.pop();
                trailing_slash = idx == last;
            }
            s => {
                out.push(s);
                rfc.push(false);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
