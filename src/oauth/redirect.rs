//! Return-URL safety: where `rd` (or the page that triggered a login) may lead.
//!
//! Invariants: a URL is followed only if, parsed as the browser will parse it, its scheme is
//! https (http only with `cookie_secure = false`), it has no user info, its host is in
//! `redirect_domains` (`.example.com` = the domain and its subdomains, on a label boundary),
//! and its port is the scheme's default unless the entry names one. Raw control characters,
//! whitespace and backslashes are refused before parsing, because URL parsers silently drop
//! or rewrite them (`/\t/evil.com` parses as `//evil.com`).

use url::{Host, Url};

use crate::domain::RedirectDomain;

/// Where return URLs may lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectPolicy {
    entries: Vec<RedirectDomain>,
    allow_http: bool,
}

impl RedirectPolicy {
    /// `domains`: where return URLs may lead (the config's `redirect_domains`, or the cookie
    /// domains, plus the public URL's host); `allow_http`: whether `http` URLs are followed
    /// (only with `cookie_secure = false`).
    pub fn new(domains: &[RedirectDomain], allow_http: bool) -> Self {
        Self {
            entries: domains.to_vec(),
            allow_http,
        }
    }

    /// The URL to follow, or `None` when `rd` is not safe. `origin` is the scheme and host of
    /// the request that triggered the login (`https`, `app.example.com:8443`), against which a
    /// relative `rd` is resolved.
    pub fn check(&self, rd: &str, origin: Option<(&str, &str)>) -> Option<Url> {
        if rd.is_empty()
            || rd.len() > 4096
            || rd
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return None;
        }
        let url = if rd.starts_with('/') {
            // One leading slash only: `//evil.com` is scheme-relative, not a path.
            if rd.starts_with("//") {
                return None;
            }
            let (scheme, host) = origin?;
            if !matches!(scheme, "http" | "https") {
                return None;
            }
            let base = Url::parse(&format!("{scheme}://{host}/")).ok()?;
            // The base must itself be a plain host (no path, user info or query sneaking in
            // through a forwarded Host header).
            if base.path() != "/" || !base.username().is_empty() || base.query().is_some() {
                return None;
            }
            base.join(rd).ok()?
        } else {
            Url::parse(rd).ok()?
        };
        self.allowed(&url).then_some(url)
    }

    fn allowed(&self, url: &Url) -> bool {
        let secure = match url.scheme() {
            "https" => true,
            "http" if self.allow_http => false,
            _ => return false,
        };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(Host::Ipv4(a)) => a.to_string(),
            Some(Host::Ipv6(_)) | None => return false,
        };
        let default_port = if secure { 443 } else { 80 };
        let port = url.port().unwrap_or(default_port);
        self.entries
            .iter()
            .any(|e| e.allows(&host, port, default_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(&domains(&[".example.com", "other.org:8443"]), false)
    }

    fn domains(list: &[&str]) -> Vec<RedirectDomain> {
        list.iter()
            .map(|d| RedirectDomain::parse(d).unwrap())
            .collect()
    }

    const ORIGIN: Option<(&str, &str)> = Some(("https", "app.example.com"));

    #[test]
    fn open_redirect_tricks_are_refused() {
        let p = policy();
        for rd in [
            "//evil.com",
            "//evil.com/path",
            "/\\evil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            "/%0d%0aSet-Cookie:x",
            "https://example.com.evil.com/",
            "https://evilexample.com/",
            "https://example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "https://app.example.com\r\nLocation: https://evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://app.example.com:8443/",
            "https://other.org/",
            "http://app.example.com/",
            "\\\\evil.com",
            "https:/\\evil.com",
            "https:evil.com",
            "evil.com",
            "/ /evil.com",
            "https://[::1]/",
            "ftp://app.example.com/",
            "",
        ] {
            // Refused, or resolved to a URL that is itself on an allowed host.
            match p.check(rd, ORIGIN) {
                None => {}
                Some(u) => assert!(
                    u.host_str().is_some_and(|h| h == "app.example.com")
                        && u.scheme() == "https"
                        && u.port().is_none(),
                    "{rd:?} was accepted as {u}"
                ),
            }
        }
        // The encoded CR/LF stays encoded in a path on the origin host: harmless.
        assert_eq!(
            p.check("/%0d%0aSet-Cookie:x", ORIGIN).unwrap().as_str(),
            "https://app.example.com/%0d%0aSet-Cookie:x"
        );
    }

    #[test]
    fn allowed_targets() {
        let p = policy();
        for (rd, want) in [
            ("https://example.com/", "https://example.com/"),
            (
                "https://app.example.com/x?y=1#z",
                "https://app.example.com/x?y=1#z",
            ),
            ("https://a.b.example.com:443/", "https://a.b.example.com/"),
            ("https://APP.Example.COM/", "https://app.example.com/"),
            ("https://other.org:8443/", "https://other.org:8443/"),
            (
                "/dashboard?tab=1",
                "https://app.example.com/dashboard?tab=1",
            ),
            ("/", "https://app.example.com/"),
        ] {
            assert_eq!(
                p.check(rd, ORIGIN).map(|u| u.to_string()).as_deref(),
                Some(want),
                "{rd}"
            );
        }
        // A relative rd from an origin outside the list is refused.
        assert!(p.check("/x", Some(("https", "evil.com"))).is_none());
        assert!(p.check("/x", None).is_none());
        assert!(p
            .check("/x", Some(("https", "app.example.com/@evil.com")))
            .is_none());
        // http only when cookies are not Secure.
        let lax = RedirectPolicy::new(&domains(&[".example.com"]), true);
        assert!(lax.check("http://app.example.com/", None).is_some());
        assert!(lax.check("http://app.example.com:8080/", None).is_none());
    }
}
