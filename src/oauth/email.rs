//! Who may enter: the email policy applied to a verified ID token's claims.
//!
//! Invariants: the address has exactly one `@`, and its domain is compared exactly (lower-cased
//! once, no suffix matching, no trailing-dot folding) with `allowed_domains`; `email_verified`
//! must be true; for Google, the `hd` claim must equal the domain that admitted the address
//! (a consumer account can carry any address, only `hd` proves Workspace membership).

use crate::domain::{is_host_name, DomainName};

/// The outcome of the policy for one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailVerdict {
    /// May sign in.
    Allowed,
    /// `email_verified` is missing or false.
    Unverified,
    /// Not in `allowed_emails`, and the domain (or `hd`) is not allowed, or the address is
    /// malformed.
    Denied,
}

/// Who may sign in: `allowed_domains`, `allowed_emails`, and whether Google's `hd` claim must
/// match the domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailPolicy {
    domains: Vec<DomainName>,
    emails: Vec<String>,
    require_hd: bool,
}

impl EmailPolicy {
    /// `domains` and `emails` as configured; `require_hd` for the Google provider.
    pub fn new(domains: &[DomainName], emails: &[String], require_hd: bool) -> Self {
        Self {
            domains: domains.to_vec(),
            emails: emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
            require_hd,
        }
    }

    /// The verdict for an ID token's `email`, `email_verified` and `hd` claims.
    pub fn check(&self, email: &str, verified: Option<bool>, hd: Option<&str>) -> EmailVerdict {
        if verified != Some(true) {
            return EmailVerdict::Unverified;
        }
        let Some(normal) = normalize(email) else {
            return EmailVerdict::Denied;
        };
        if self.emails.iter().any(|e| *e == *normal) {
            return EmailVerdict::Allowed;
        }
        self.check_domain(&normal, hd)
    }

    /// The domain part of the policy alone, for an address already normalised: used again on
    /// every request, so a session whose domain was removed from the config stops working.
    pub fn allows_session(&self, email: &str) -> bool {
        match normalize(email) {
            Some(n) => self.emails.iter().any(|e| *e == *n) || self.domain_allowed(&n),
            None => false,
        }
    }

    fn domain_allowed(&self, normal: &str) -> bool {
        let domain = normal.rsplit_once('@').map_or("", |(_, d)| d);
        self.domains.iter().any(|d| d.as_str() == domain)
    }

    fn check_domain(&self, normal: &str, hd: Option<&str>) -> EmailVerdict {
        if !self.domain_allowed(normal) {
            return EmailVerdict::Denied;
        }
        if self.require_hd {
            let domain = normal.rsplit_once('@').map_or("", |(_, d)| d);
            if !hd.is_some_and(|h| h.eq_ignore_ascii_case(domain)) {
                return EmailVerdict::Denied;
            }
        }
        EmailVerdict::Allowed
    }
}

/// Lower-cases a plain `local@domain` address; `None` for anything else: several or no `@`,
/// quotes, whitespace, control characters, backslashes, an empty part, a trailing dot. Borrows
/// an address that is already lower case (every session's, on every request).
pub fn normalize(email: &str) -> Option<std::borrow::Cow<'_, str>> {
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    let bad = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '"' | '\\' | '(' | ')' | ',' | ';' | ':' | '<' | '>' | '[' | ']'
            )
    };
    if email.chars().any(bad) {
        return None;
    }
    if !is_host_name(domain) {
        return None;
    }
    if email.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(email.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(email))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EmailVerdict::*;

    fn google() -> EmailPolicy {
        EmailPolicy::new(
            &[domain("example.com")],
            &["contractor@gmail.com".into()],
            true,
        )
    }

    fn oidc() -> EmailPolicy {
        EmailPolicy::new(&[domain("example.com")], &[], false)
    }

    fn domain(name: &str) -> DomainName {
        DomainName::parse(name).unwrap()
    }

    #[test]
    fn known_bypasses() {
        let p = google();
        let t = Some(true);
        let table: &[(&str, Option<bool>, Option<&str>, EmailVerdict)] = &[
            ("alice@example.com", t, Some("example.com"), Allowed),
            ("Alice@EXAMPLE.com", t, Some("Example.com"), Allowed),
            // Multi-@ (oauth2-proxy CVE-2026-40574): never read the last @ only.
            ("a@evil.com@example.com", t, Some("example.com"), Denied),
            ("a@example.com@evil.com", t, Some("example.com"), Denied),
            // Subdomains and look-alikes.
            ("a@sub.example.com", t, Some("sub.example.com"), Denied),
            ("a@evilexample.com", t, Some("evilexample.com"), Denied),
            ("a@example.com.evil.com", t, Some("example.com"), Denied),
            ("a@example.com.", t, Some("example.com"), Denied),
            // Quoted local parts and other syntax.
            ("\"a@evil.com\"@example.com", t, Some("example.com"), Denied),
            ("\"a\"@example.com", t, Some("example.com"), Denied),
            ("a b@example.com", t, Some("example.com"), Denied),
            ("a@example.com\n", t, Some("example.com"), Denied),
            ("@example.com", t, Some("example.com"), Denied),
            ("a@", t, None, Denied),
            ("example.com", t, Some("example.com"), Denied),
            // Unverified (oauth2-proxy #2363).
            (
                "alice@example.com",
                Some(false),
                Some("example.com"),
                Unverified,
            ),
            ("alice@example.com", None, Some("example.com"), Unverified),
            // hd missing or different: a consumer account holding a company address.
            ("alice@example.com", t, None, Denied),
            ("alice@example.com", t, Some("other.com"), Denied),
            ("alice@example.com", t, Some("example.com."), Denied),
            // allowed_emails admits a single address whatever its domain, still verified.
            ("contractor@gmail.com", t, None, Allowed),
            ("Contractor@Gmail.com", t, None, Allowed),
            ("contractor@gmail.com", Some(false), None, Unverified),
            ("other@gmail.com", t, None, Denied),
        ];
        for (email, verified, hd, want) in table {
            assert_eq!(
                p.check(email, *verified, *hd),
                *want,
                "{email:?} {verified:?} {hd:?}"
            );
        }
    }

    #[test]
    fn oidc_does_not_need_hd() {
        assert_eq!(oidc().check("bob@example.com", Some(true), None), Allowed);
        assert_eq!(oidc().check("bob@example.org", Some(true), None), Denied);
    }

    #[test]
    fn sessions_are_rechecked_against_the_current_policy() {
        let p = google();
        assert!(p.allows_session("alice@example.com"));
        assert!(p.allows_session("contractor@gmail.com"));
        assert!(!p.allows_session("mallory@evil.com"));
        assert!(!EmailPolicy::new(&[], &[], true).allows_session("alice@example.com"));
    }
}
