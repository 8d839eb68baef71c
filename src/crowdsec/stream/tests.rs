//! Unit tests of the LAPI body parsers: every shape the LAPI sends, and what is refused.

use super::*;

const NOW: u32 = 1_700_000_000;

#[test]
fn empty_bodies() {
    for body in [
        r#"{"new":null,"deleted":null}"#,
        r#"{"new":[],"deleted":[]}"#,
        r#"{}"#,
        r#"{"new":null,"deleted":null,"links":{"x":1}}"#,
    ] {
        let p = parse_stream(body.as_bytes(), NOW).unwrap();
        assert_eq!(p, Parsed::default(), "{body}");
    }
    assert_eq!(parse_live(b"null", NOW).unwrap(), None);
    assert_eq!(parse_live(b"[]", NOW).unwrap(), None);
}

#[test]
fn real_lapi_shapes() {
    let body = r#"{"deleted":[{"duration":"-2m0.5s","id":3,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"9.9.9.9"}],
        "new":[
          {"duration":"59m58.646682607s","id":1,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"1.2.3.4","uuid":"u","simulated":false},
          {"duration":"3h","id":2,"origin":"cscli","scenario":"manual","scope":"Range","type":"captcha","value":"10.0.0.0/24"},
          {"duration":"1h","scope":"Ip","type":"ban","value":"::ffff:5.6.7.8"},
          {"duration":"1h","scope":"Country","type":"ban","value":"FR"},
          {"duration":"1h","scope":"Ip","type":"ban","value":"not-an-ip"},
          {"duration":"forever","scope":"Ip","type":"ban","value":"1.1.1.1"},
          {"duration":"-1s","scope":"Ip","type":"ban","value":"2.2.2.2"},
          {"duration":"1h","scope":"Range","type":"ban","value":"3.3.3.3"},
          {"duration":"1h","scope":"range","type":"throttle","value":"2001:db8::/32"}
        ]}"#;
    let p = parse_stream(body.as_bytes(), NOW).unwrap();
    assert_eq!(p.other_scope, 1);
    assert_eq!(p.invalid, 2);
    assert_eq!(
        p.skipped
            .iter()
            .map(|s| (s.scope.as_str(), s.value.as_str()))
            .collect::<Vec<_>>(),
        [("Country", "FR"), ("Ip", "not-an-ip"), ("Ip", "1.1.1.1")],
        "skipped decisions are kept as examples for the log"
    );
    assert_eq!(p.delta.deleted.len(), 1);
    let op = |id: Option<u64>, target: Target, kind: Remediation, until: u32| Op {
        id: id.unwrap_or_else(|| synthetic_id(&target, kind)),
        target,
        kind,
        until,
    };
    assert_eq!(
        p.delta.new,
        vec![
            op(
                Some(1),
                Target::Ip("1.2.3.4".parse().unwrap()),
                Remediation::Ban,
                NOW + 3599
            ),
            op(
                Some(2),
                Target::Range("10.0.0.0/24".parse().unwrap()),
                Remediation::Captcha,
                NOW + 10_800
            ),
            op(
                None,
                Target::Ip("5.6.7.8".parse().unwrap()),
                Remediation::Ban,
                NOW + 3600
            ),
            // A Range value without a prefix length is one address, as the LAPI reads it.
            op(
                None,
                Target::Ip("3.3.3.3".parse().unwrap()),
                Remediation::Ban,
                NOW + 3600
            ),
            op(
                None,
                Target::Range("2001:db8::/32".parse().unwrap()),
                Remediation::Other,
                NOW + 3600
            ),
        ]
    );
}

/// The LAPI's own matching decides what a value means, not its scope: a CIDR under scope
/// `Ip` (what `cscli decisions import` stores) is a range, host bits are cleared, a mapped
/// IPv6 range is its first IPv4 address (as CrowdSec 1.4.6 matches it), and ids are kept.
#[test]
fn values_are_read_as_the_lapi_matches_them() {
    let body = r#"{"new":[
        {"duration":"1h","id":1,"scope":"Ip","type":"ban","value":"198.51.100.0/30"},
        {"duration":"1h","id":2,"scope":"Ip","type":"ban","value":"203.0.113.77/24"},
        {"duration":"1h","id":3,"scope":"Range","type":"ban","value":"::ffff:192.0.2.0/120"},
        {"duration":"1h","id":4,"scope":"ip","type":"captcha","value":" 2001:db8::1 "},
        {"duration":"1h","id":-5,"scope":"Ip","type":"ban","value":"192.0.2.200"},
        {"duration":"1h","id":"6","scope":"Ip","type":"ban","value":"192.0.2.201"},
        {"duration":"1h","id":{"x":[1]},"scope":"Ip","type":"ban","value":"192.0.2.202"},
        {"duration":"1h","id":1.5,"scope":"Ip","type":"ban","value":"192.0.2.203"}
    ],"deleted":null}"#;
    let p = parse_stream(body.as_bytes(), NOW).unwrap();
    let got: Vec<(u64, Target)> = p.delta.new.iter().map(|o| (o.id, o.target)).collect();
    let ip = |s: &str| Target::Ip(s.parse().unwrap());
    let net = |s: &str| Target::Range(s.parse().unwrap());
    assert_eq!(
        got[..4],
        [
            (1, net("198.51.100.0/30")),
            (2, net("203.0.113.0/24")),
            // The LAPI matches only the first address of a mapped IPv6 range.
            (3, ip("192.0.2.0")),
            (4, ip("2001:db8::1")),
        ]
    );
    // Ids that are not non-negative integers are replaced by synthetic ones.
    assert!(got[4..].iter().all(|(id, _)| id >> 63 == 1), "{got:?}");
    assert_eq!(got.len(), 8);
    assert_eq!(p.invalid + p.other_scope, 0);
}

#[test]
fn garbage_is_rejected_whole() {
    for body in [
        &b""[..],
        b"{",
        b"{\"new\":[{\"scope\":\"Ip\"",
        b"[]",
        b"<html>502</html>",
        b"{\"new\":{}}",
        b"{\"new\":[1]}",
    ] {
        assert!(
            parse_stream(body, NOW).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(parse_live(b"{\"message\":\"access forbidden\"}", NOW).is_err());
}

#[test]
fn live_picks_strongest() {
    let body = r#"[{"duration":"1h","scope":"Ip","type":"captcha","value":"1.2.3.4"},
                   {"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.4"}]"#;
    assert_eq!(
        parse_live(body.as_bytes(), NOW).unwrap(),
        Some(Remediation::Ban)
    );
    let expired = r#"[{"duration":"-1h","scope":"Ip","type":"ban","value":"1.2.3.4"}]"#;
    assert_eq!(parse_live(expired.as_bytes(), NOW).unwrap(), None);
}
