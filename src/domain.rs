//! Domain names as the config writes them and as the gate compares them: one label rule and one
//! "the domain or a subdomain" match, used by cookie domains, return-URL domains, email domains
//! and route hosts alike.
//!
//! Invariants: every name is lower case without a trailing dot, and a suffix matches only on a
//! label boundary (`.example.com` matches `a.example.com`, never `evilexample.com`), the rule
//! linkerd's `Suffix` keeps by storing the leading dot.

use std::fmt;

/// Whether `name` is a host name: dot-separated labels of 1–63 ASCII letters, digits, `-` or
/// `_` (Docker service names carry `_`), at most 253 bytes in all (RFC 1035 §2.3.4, relaxed
/// for `_` as browsers and Docker's DNS are). Case is not checked.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `host` (already lower case) is `name` itself or one of its subdomains, on a label
/// boundary.
pub fn is_within(host: &str, name: &str) -> bool {
    host == name || is_below(host, name)
}

/// Whether `host` (already lower case) is a proper subdomain of `name`, on a label boundary.
pub fn is_below(host: &str, name: &str) -> bool {
    host.len() > name.len()
        && host.ends_with(name)
        && host.as_bytes()[host.len() - name.len() - 1] == b'.'
}

/// Why a domain entry of the config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not a host name (see [`is_host_name`]); holds the entry as written.
    #[error("not a domain name: {0:?}")]
    NotADomain(String),
    /// A `:port` that is not 1–65535 written without leading zeros, or a port where none may be.
    #[error("not a domain name with an optional :port: {0:?}")]
    BadPort(String),
}

/// Normalises an entry: trimmed, lower case, one trailing dot dropped.
fn normal(text: &str) -> String {
    let t = text.trim();
    t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase()
}

/// A domain compared exactly, such as an entry of `auth.allowed_domains`: lower case, no
/// trailing dot, a valid host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Parses `example.com` (any case, one trailing dot allowed).
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let name = normal(text);
        if is_host_name(&name) {
            Ok(Self(name))
        } else {
            Err(DomainError::NotADomain(text.to_owned()))
        }
    }

    /// The lower-case name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cookie-style domain entry: `example.com` is that host only, `.example.com` that domain
/// and every subdomain (as in `session.cookie_domains` and `auth.redirect_domains`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSuffix {
    name: DomainName,
    subdomains: bool,
}

impl DomainSuffix {
    /// Parses `example.com` or `.example.com`.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let t = text.trim();
        let (subdomains, rest) = match t.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let name = DomainName::parse(rest).map_err(|_| DomainError::NotADomain(text.into()))?;
        Ok(Self { name, subdomains })
    }

    /// Whether `host` (lower case, no port) is covered by this entry.
    pub fn matches(&self, host: &str) -> bool {
        let name = self.name.as_str();
        if self.subdomains {
            is_within(host, name)
        } else {
            host == name
        }
    }

    /// The name without the leading dot, as a cookie's `Domain` attribute carries it
    /// (RFC 6265 §5.2.3 ignores a leading dot).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl fmt::Display for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str(".")?;
        }
        f.write_str(self.name.as_str())
    }
}

/// An entry of `auth.redirect_domains`: a [`DomainSuffix`] and, optionally, the one port a
/// return URL may name (`example.com:8443`); without one, only the scheme's default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectDomain {
    /// The domain, and whether its subdomains count.
    pub domain: DomainSuffix,
    /// The port a return URL must use; `None`: the scheme's default.
    pub port: Option<u16>,
}

impl RedirectDomain {
    /// Parses `example.com`, `.example.com`, `example.com:8443` or `.example.com:8443`.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let t = text.trim();
        let (host, port) = match t.rsplit_once(':') {
            Some((host, port)) => {
                let ok = !port.starts_with('0') && port.bytes().all(|b| b.is_ascii_digit());
                match port.parse::<u16>() {
                    Ok(p) if ok && p > 0 => (host, Some(p)),
                    _ => return Err(DomainError::BadPort(text.to_owned())),
                }
            }
            None => (t, None),
        };
        let domain = DomainSuffix::parse(host).map_err(|_| DomainError::BadPort(text.into()))?;
        Ok(Self { domain, port })
    }

    /// Whether `host` on `port` may be returned to, `default_port` being the URL scheme's.
    pub fn allows(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.domain.matches(host) && port == self.port.unwrap_or(default_port)
    }
}

impl fmt::Display for RedirectDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.domain)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in [
            "a",
            "example.com",
            "my_app.internal",
            "x-1.y",
            &"a".repeat(63),
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a/b",
            "é.com",
            &"a".repeat(64),
        ] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
        assert!(!is_host_name(&format!("{}.com", "a.".repeat(126))));
    }

    #[test]
    fn suffixes_match_on_label_boundaries() {
        let dot = DomainSuffix::parse(".Example.COM.").unwrap();
        assert_eq!(dot.to_string(), ".example.com");
        assert_eq!(dot.name(), "example.com");
        assert!(dot.matches("example.com"));
        assert!(dot.matches("a.b.example.com"));
        assert!(!dot.matches("evilexample.com"));
        assert!(!dot.matches("example.com.evil"));
        let exact = DomainSuffix::parse("example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("a.example.com"));
        assert!(DomainSuffix::parse("..example.com").is_err());
        assert!(DomainSuffix::parse("example.com:443").is_err());
    }

    #[test]
    fn redirect_domains_take_one_port() {
        let r = RedirectDomain::parse(".example.com:8443").unwrap();
        assert_eq!(r.to_string(), ".example.com:8443");
        assert!(r.allows("a.example.com", 8443, 443));
        assert!(!r.allows("a.example.com", 443, 443));
        let d = RedirectDomain::parse("example.com").unwrap();
        assert!(d.allows("example.com", 443, 443));
        assert!(!d.allows("example.com", 8443, 443));
        for bad in [
            "example.com:0",
            "example.com:08443",
            "example.com:70000",
            "x:",
            ":1",
        ] {
            assert!(RedirectDomain::parse(bad).is_err(), "{bad}");
        }
    }
}
