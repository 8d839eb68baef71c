//! Unit tests of route rules: path and host normalisation tables, segment prefixes, first match.

use super::*;

fn check_path(input: &str, want: Result<&str, PathError>) {
    let got = normalize_path(input.as_bytes());
    assert_eq!(got.as_deref().map_err(|e| *e), want, "{input:?}");
}

#[test]
fn paths() {
    use PathError::*;
    let table: &[(&str, Result<&str, PathError>)] = &[
        ("/", Ok("/")),
        ("/admin", Ok("/admin")),
        ("/admin/", Ok("/admin/")),
        ("/admin?x=/../y", Ok("/admin")),
        ("/admin?q={|}^", Ok("/admin")),
        ("/admin#frag", Err(InvalidByte)),
        ("/public#/../admin", Err(InvalidByte)),
        ("/admin /x", Err(InvalidByte)),
        ("/admin\t", Err(InvalidByte)),
        ("/a\"b", Err(InvalidByte)),
        ("/a<b>", Err(InvalidByte)),
        ("/a{b}", Err(InvalidByte)),
        ("/admin;jsessionid=1", Err(Semicolon)),
        ("/x/..;/admin", Err(Semicolon)),
        ("/x/%3B/admin", Err(Semicolon)),
        ("/admin%09", Err(ControlChar)),
        ("/admin%0a", Err(ControlChar)),
        ("/admin%7F", Err(ControlChar)),
        ("/admin%20x", Ok("/admin x")),
        ("/admin//..", Err(Ambiguous)),
        ("/a//b/../..", Err(Ambiguous)),
        ("/a//b/..", Ok("/a/")),
        ("/a//./b", Ok("/a/b")),
        ("//admin", Ok("/admin")),
        ("/a//b///c", Ok("/a/b/c")),
        ("/a/./b", Ok("/a/b")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/../c", Ok("/a/c")),
        ("/public/../admin", Ok("/admin")),
        ("/public/%2e%2e/admin", Ok("/admin")),
        ("/public/%2E%2E/admin", Ok("/admin")),
        ("/%61dmin", Ok("/admin")),
        ("/caf%C3%A9", Ok("/café")),
        ("/.", Ok("/")),
        ("/ＡＤＭＩＮ/．．", Ok("/ＡＤＭＩＮ/．．")),
        ("/a/.", Ok("/a/")),
        ("/..", Err(Escapes)),
        ("/a/../..", Err(Escapes)),
        ("/%2e%2e/x", Err(Escapes)),
        ("/a%2Fb", Err(EncodedSeparator)),
        ("/a%2fb", Err(EncodedSeparator)),
        ("/a%5Cb", Err(EncodedSeparator)),
        ("/a%00b", Err(EncodedSeparator)),
        ("/a%zz", Err(BadEscape)),
        ("/a%4", Err(BadEscape)),
        ("/a%", Err(BadEscape)),
        ("/a%FF", Err(NotUtf8)),
        ("/a\\b", Err(Backslash)),
        ("", Err(NotAbsolute)),
        ("admin", Err(NotAbsolute)),
        ("http://x/admin", Err(NotAbsolute)),
        ("?x", Err(NotAbsolute)),
    ];
    for (input, want) in table {
        check_path(input, *want);
    }
    assert_eq!(normalize_path(b"/a\xff"), Err(NotUtf8));
    // Double encoding decodes once, as the upstream does: %252F is the text "%2F".
    check_path("/a%252Fb", Ok("/a%2Fb"));
}

#[test]
fn hosts() {
    for (raw, want) in [
        ("Example.COM", "example.com"),
        ("example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("my_host", "my_host"),
    ] {
        assert_eq!(normalize_host(raw).as_deref(), Some(want), "{raw}");
    }
    // Anything a proxy could read as another host is refused.
    for raw in [
        "admin.example.com:abc",
        "admin.example.com:",
        "admin.example.com:123456",
        "a:b",
        ":443",
        ".",
        "",
        "a..b",
        ".example.com",
        "example.com..",
        "ex ample.com",
        "example.com/x",
        "user@example.com",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[nothex]",
        "exämple.com",
    ] {
        assert_eq!(normalize_host(raw), None, "{raw:?}");
    }
}

#[test]
fn host_patterns() {
    let wild = HostPattern::parse("*.Example.com").unwrap();
    assert!(wild.matches("a.example.com"));
    assert!(wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(!wild.matches("evilexample.com"));
    assert!(!wild.matches("example.com.evil.com"));
    let exact = HostPattern::parse("status.example.com.").unwrap();
    assert!(exact.matches("status.example.com"));
    assert!(!exact.matches("x.status.example.com"));
    for bad in [
        "",
        "*",
        "*.",
        "a..b",
        "example.com:443",
        "https://x",
        "a*.b",
        "*.*.b",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn prefixes() {
    let admin = PathPrefix::parse("/admin/").unwrap();
    assert_eq!(admin.as_str(), "/admin");
    assert!(admin.matches("/admin"));
    assert!(admin.matches("/admin/"));
    assert!(admin.matches("/admin/x"));
    assert!(!admin.matches("/administrator"));
    assert!(!admin.matches("/Admin"));
    assert!(PathPrefix::parse("/").unwrap().matches("/anything"));
    assert!(PathPrefix::parse("admin").is_err());
    assert!(PathPrefix::parse("/a?b").is_err());
}

#[test]
fn first_match_wins() {
    let rule = |host: Option<&str>, path: Option<&str>, methods: &[&str], policy| Rule {
        host: host.map(|h| HostPattern::parse(h).unwrap()),
        path_prefix: path.map(|p| PathPrefix::parse(p).unwrap()),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        policy,
    };
    let rules = Rules::new(
        vec![
            rule(Some("status.example.com"), None, &[], Policy::Public),
            rule(None, Some("/admin"), &["POST"], Policy::Deny),
            rule(Some("*.example.com"), Some("/api"), &[], Policy::Login),
            rule(None, Some("/admin"), &[], Policy::Public),
        ],
        true,
    );
    assert_eq!(
        rules.policy("GET", "status.example.com", "/admin"),
        Policy::Public
    );
    assert_eq!(
        rules.policy("POST", "app.example.com", "/admin/x"),
        Policy::Deny
    );
    assert_eq!(
        rules.policy("post", "app.example.com", "/admin"),
        Policy::Deny
    );
    assert_eq!(
        rules.policy("GET", "app.example.com", "/admin"),
        Policy::Public
    );
    assert_eq!(
        rules.policy("GET", "app.example.com", "/api/v1"),
        Policy::Login
    );
    assert_eq!(rules.policy("GET", "example.com", "/api"), Policy::Login);
    assert_eq!(rules.policy("GET", "other.org", "/"), Policy::Login);
    let open = Rules::new(Vec::new(), false);
    assert_eq!(open.policy("GET", "x", "/"), Policy::Public);
}
