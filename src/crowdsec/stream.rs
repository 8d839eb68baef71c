//! The LAPI wire format: `/v1/decisions/stream` and `/v1/decisions?ip=` bodies into table ops.
//!
//! Invariants: a body that does not parse as a whole is rejected as a whole (never half
//! applied); `null` and `[]` lists, unknown fields and Go durations with nanoseconds are
//! accepted; a single decision that makes no sense (unknown scope, bad value, bad duration) is
//! skipped and counted, and does not poison the rest of the answer.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::table::{synthetic_id, Delta, Kind, Op, Target};
use crate::client_ip::{canonical, parse_net};
use crate::duration::parse_go_seconds;

#[derive(Deserialize)]
struct RawDecision<'a> {
    /// A non-negative integer from the LAPI; anything else counts as absent.
    #[serde(default, deserialize_with = "lenient_id")]
    id: Option<u64>,
    #[serde(borrow, default)]
    scope: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    duration: Option<Cow<'a, str>>,
}

/// A parsed stream answer: the delta and how many decisions were skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub delta: Delta,
    /// Decisions of a scope the gate does not enforce (e.g. `Country`, `AS`).
    pub other_scope: usize,
    /// Decisions that were malformed (bad address, missing type, bad duration).
    pub invalid: usize,
    /// The first few skipped decisions, for the log (at most [`MAX_SKIPPED_EXAMPLES`]).
    pub skipped: Vec<Skipped>,
}

/// How many skipped decisions one answer keeps as examples for the log.
pub const MAX_SKIPPED_EXAMPLES: usize = 8;

/// A decision the gate cannot enforce, as the LAPI sent it (scope and value cut to 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub scope: String,
    pub value: String,
    pub why: &'static str,
}

impl Parsed {
    fn skip(&mut self, d: &RawDecision<'_>, why: &'static str, other_scope: bool) {
        if other_scope {
            self.other_scope += 1;
        } else {
            self.invalid += 1;
        }
        if self.skipped.len() < MAX_SKIPPED_EXAMPLES {
            let cut = |s: Option<&Cow<'_, str>>| {
                let s = s.map_or("", |s| s.as_ref());
                s.char_indices()
                    .take_while(|(i, _)| *i < 64)
                    .map(|(_, c)| c)
                    .collect()
            };
            self.skipped.push(Skipped {
                scope: cut(d.scope.as_ref()),
                value: cut(d.value.as_ref()),
                why,
            });
        }
    }
}

/// The `id` of a decision: a non-negative integer, anything else `None` (never an error, which
/// would reject the whole answer). A visitor rather than a `serde_json::Value`: this runs once
/// per decision of a million-decision startup stream.
fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Id;
    impl<'de> serde::de::Visitor<'de> for Id {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a decision id")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Option<u64>, A::Error> {
            while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Option<u64>, A::Error> {
            while a
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(Id)
}

/// A body that is not the JSON the LAPI is supposed to send.
#[derive(Debug, thiserror::Error)]
pub enum BadBody {
    #[error("invalid LAPI response: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid LAPI response: not a JSON object")]
    NotAnObject,
}

/// Parses a stream body. `now` is Unix seconds, to turn durations into deadlines.
///
/// Each decision is turned into an op as it is read, so a startup stream of a million
/// decisions never exists as a million parsed JSON objects at once (only the body and the ops).
pub fn parse_stream(body: &[u8], now: u32) -> Result<Parsed, BadBody> {
    // serde accepts a struct written as a JSON array too; a startup answer of `[]` must not
    // pass for "no decisions" and wipe the table.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BadBody::NotAnObject);
    }
    let mut parsed = Parsed::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(
        BodySeed {
            now,
            parsed: &mut parsed,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(parsed)
}

/// Visits the top-level object, sending `new` and `deleted` through [`ListSeed`] and skipping
/// every other key.
struct BodySeed<'p> {
    now: u32,
    parsed: &'p mut Parsed,
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a decisions stream object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "new" => map.next_value_seed(ListSeed {
                    now: self.now,
                    adding: true,
                    parsed: self.parsed,
                })?,
                "deleted" => map.next_value_seed(ListSeed {
                    now: self.now,
                    adding: false,
                    parsed: self.parsed,
                })?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `null` or a list of decisions, each converted and pushed as it is read.
struct ListSeed<'p> {
    now: u32,
    adding: bool,
    parsed: &'p mut Parsed,
}

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null or a list of decisions")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            let list = if self.adding {
                &mut self.parsed.delta.new
            } else {
                &mut self.parsed.delta.deleted
            };
            list.reserve(n);
        }
        while let Some(d) = seq.next_element::<RawDecision<'de>>()? {
            if let Some(op) = convert(&d, self.now, self.adding, self.parsed) {
                if self.adding {
                    self.parsed.delta.new.push(op);
                } else {
                    self.parsed.delta.deleted.push(op);
                }
            }
        }
        Ok(())
    }
}

/// Parses a live-mode answer (`null` or a list of decisions for one IP) into the strongest
/// decision still in force.
pub fn parse_live(body: &[u8], now: u32) -> Result<Option<Kind>, BadBody> {
    let raw: Option<Vec<RawDecision<'_>>> = serde_json::from_slice(body)?;
    let mut parsed = Parsed::default();
    let mut best: Option<Kind> = None;
    for d in raw.unwrap_or_default() {
        if let Some(op) = convert(&d, now, true, &mut parsed) {
            best = Some(match best {
                Some(b) if rank(b) <= rank(op.kind) => b,
                _ => op.kind,
            });
        }
    }
    Ok(best)
}

fn rank(k: Kind) -> u8 {
    match k {
        Kind::Ban => 0,
        Kind::Other => 1,
        Kind::Captcha => 2,
    }
}

/// The first address of an IPv4-mapped IPv6 range (`::ffff:a.b.c.d/N`, `N` from 96 to 128),
/// which is all the LAPI matches of it (see [`convert`]).
fn mapped_v4_range_start(value: &str) -> Option<std::net::Ipv4Addr> {
    let net: ipnet::Ipv6Net = value.parse().ok()?;
    if net.prefix_len() < 96 {
        return None;
    }
    net.trunc().network().to_ipv4_mapped()
}

/// One decision into an op, or counted (and kept as an example) when the gate cannot use it.
///
/// The target follows the LAPI's own matching (`GET /v1/decisions?ip=`): a value in CIDR form
/// is a range whatever the scope says (`cscli decisions import` stores ranges under scope
/// `Ip`), with host bits cleared as Go's `net.ParseCIDR` does; IPv4-mapped IPv6 counts as IPv4.
fn convert(d: &RawDecision<'_>, now: u32, adding: bool, parsed: &mut Parsed) -> Option<Op> {
    let (Some(scope), Some(value), Some(kind)) = (&d.scope, &d.value, &d.kind) else {
        parsed.skip(d, "missing scope, value or type", false);
        return None;
    };
    if !(scope.eq_ignore_ascii_case("ip") || scope.eq_ignore_ascii_case("range")) {
        parsed.skip(d, "scope not enforced by the gate", true);
        return None;
    }
    let value = value.trim();
    let target = if let Some(ip) = mapped_v4_range_start(value) {
        // CrowdSec 1.4.6 computes the last address of an IPv4-mapped IPv6 range with a 16-byte
        // mask over the 4-byte address, so `?ip=` matches only the range's first address.
        Target::Ip(IpAddr::V4(ip))
    } else if value.contains('/') {
        match parse_net(value) {
            Some(net) => Target::Range(net.trunc()),
            None => {
                parsed.skip(d, "not an IP range", false);
                return None;
            }
        }
    } else {
        match value.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(canonical(ip)),
            Err(_) => {
                parsed.skip(d, "not an IP address", false);
                return None;
            }
        }
    };
    let until = if adding {
        let secs = match d.duration.as_deref().map(parse_go_seconds) {
            Some(Ok(s)) => s,
            _ => {
                parsed.skip(d, "missing or bad duration", false);
                return None;
            }
        };
        if secs <= 0 {
            // Already expired: nothing to enforce.
            return None;
        }
        u32::try_from(i64::from(now).saturating_add(secs)).unwrap_or(u32::MAX)
    } else {
        0
    };
    let kind = Kind::from_type(kind);
    Some(Op {
        id: d.id.unwrap_or_else(|| synthetic_id(&target, kind)),
        target,
        kind,
        until,
    })
}

#[cfg(test)]
mod tests {
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
        let op = |id: Option<u64>, target: Target, kind: Kind, until: u32| Op {
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
                    Kind::Ban,
                    NOW + 3599
                ),
                op(
                    Some(2),
                    Target::Range("10.0.0.0/24".parse().unwrap()),
                    Kind::Captcha,
                    NOW + 10_800
                ),
                op(
                    None,
                    Target::Ip("5.6.7.8".parse().unwrap()),
                    Kind::Ban,
                    NOW + 3600
                ),
                // A Range value without a prefix length is one address, as the LAPI reads it.
                op(
                    None,
                    Target::Ip("3.3.3.3".parse().unwrap()),
                    Kind::Ban,
                    NOW + 3600
                ),
                op(
                    None,
                    Target::Range("2001:db8::/32".parse().unwrap()),
                    Kind::Other,
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
        assert_eq!(parse_live(body.as_bytes(), NOW).unwrap(), Some(Kind::Ban));
        let expired = r#"[{"duration":"-1h","scope":"Ip","type":"ban","value":"1.2.3.4"}]"#;
        assert_eq!(parse_live(expired.as_bytes(), NOW).unwrap(), None);
    }
}

/// The mirror property (SPEC step 2): random sequences of stream deltas, in every spelling the
/// LAPI sends, go through the parser into the decision table and into a plain reference model
/// of the LAPI (a list of decisions, each living until its own deletion or expiry); for every
/// probed address at every step, the table answers what the model does.
#[cfg(test)]
mod mirror {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::super::table::{DecisionTable, Kind};
    use super::parse_stream;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A decision the LAPI holds: its id, how it is written, and what it covers (first and
    /// last address, IPv4 as mapped IPv6, so one integer line holds both families).
    #[derive(Clone, Debug)]
    struct Template {
        id: Option<u64>,
        scope: &'static str,
        value: String,
        kind: &'static str,
        first: u128,
        last: u128,
    }

    impl Template {
        /// Whether the table keeps it as a range (a mapped IPv6 range is its first address).
        fn is_range(&self) -> bool {
            self.value.contains('/') && !self.value.starts_with("::ffff:")
        }
    }

    fn v4(a: u32) -> u128 {
        u128::from(Ipv4Addr::from(a).to_ipv6_mapped())
    }

    fn template(rng: &mut Rng, id: Option<u64>) -> Template {
        let kind = ["ban", "ban", "captcha", "throttle"][rng.below(4) as usize];
        let host = rng.below(64) as u32;
        let base = 0x0A00_0000u32; // 10.0.0.0
        let (scope, value, first, last) = match rng.below(7) {
            0 => (
                "Ip",
                Ipv4Addr::from(base + host).to_string(),
                v4(base + host),
                v4(base + host),
            ),
            1 => (
                "Ip",
                format!("::ffff:{}", Ipv4Addr::from(base + host)),
                v4(base + host),
                v4(base + host),
            ),
            2 | 3 => {
                // A CIDR, host bits set or not, under scope Ip (cscli import) or Range.
                let len = 26 + rng.below(7) as u32;
                let size = 1u32 << (32 - len);
                let net = (base + host) & !(size - 1);
                let written = if rng.below(2) == 0 { base + host } else { net };
                let scope = if rng.below(2) == 0 { "Ip" } else { "Range" };
                (
                    scope,
                    format!("{}/{len}", Ipv4Addr::from(written)),
                    v4(net),
                    v4(net + size - 1),
                )
            }
            4 => {
                // An IPv4-mapped IPv6 range: the LAPI matches its first address only.
                let len = 26 + rng.below(7) as u32;
                let size = 1u32 << (32 - len);
                let net = (base + host) & !(size - 1);
                (
                    "Range",
                    format!("::ffff:{}/{}", Ipv4Addr::from(net), 96 + len),
                    v4(net),
                    v4(net),
                )
            }
            5 => {
                let a = 0x2001_0db8_u128 << 96 | u128::from(host);
                ("Ip", Ipv6Addr::from(a).to_string(), a, a)
            }
            _ => {
                let len = 122 + rng.below(7) as u32;
                let size = 1u128 << (128 - len);
                let a = 0x2001_0db8_u128 << 96 | u128::from(host);
                let net = a & !(size - 1);
                (
                    "Range",
                    format!("{}/{len}", Ipv6Addr::from(a)),
                    net,
                    net + size - 1,
                )
            }
        };
        Template {
            id,
            scope,
            value,
            kind,
            first,
            last,
        }
    }

    fn json(t: &Template, duration: &str) -> String {
        let id = t.id.map(|i| format!("\"id\":{i},")).unwrap_or_default();
        format!(
            r#"{{{id}"duration":"{duration}","origin":"cscli","scenario":"x","scope":"{}","type":"{}","value":"{}"}}"#,
            t.scope, t.kind, t.value
        )
    }

    fn rank(kind: &str) -> u8 {
        match kind {
            "ban" => 0,
            "captcha" => 2,
            _ => 1,
        }
    }

    fn kind_of(kind: &str) -> Kind {
        Kind::from_type(kind)
    }

    /// The model: (template index, until) of every live decision, keyed as the LAPI keys them
    /// (the id; an id-less decision by what it is written as).
    #[derive(Default)]
    struct Model {
        live: Vec<(usize, u32)>,
    }

    impl Model {
        fn same(a: &Template, b: &Template) -> bool {
            match (a.id, b.id) {
                (Some(x), Some(y)) => x == y,
                (None, None) => Self::same_group(a, b),
                _ => false,
            }
        }

        /// The LAPI reports a deletion only once the last decision of its (value, type) group
        /// has ended: the whole group goes.
        fn delete(&mut self, all: &[Template], t: usize) {
            self.live
                .retain(|(i, _)| !Self::same_group(&all[*i], &all[t]));
        }

        fn same_group(a: &Template, b: &Template) -> bool {
            a.first == b.first
                && a.last == b.last
                && kind_of(a.kind) == kind_of(b.kind)
                && a.is_range() == b.is_range()
        }

        fn add(&mut self, all: &[Template], t: usize, until: u32) {
            self.live.retain(|(i, _)| !Self::same(&all[*i], &all[t]));
            self.live.push((t, until));
        }

        fn answer(&self, all: &[Template], addr: u128, now: u32) -> Option<Kind> {
            self.live
                .iter()
                .filter(|(i, until)| *until > now && all[*i].first <= addr && addr <= all[*i].last)
                .map(|(i, _)| all[*i].kind)
                .min_by_key(|k| rank(k))
                .map(kind_of)
        }
    }

    fn probe_ip(addr: u128) -> IpAddr {
        let v6 = Ipv6Addr::from(addr);
        match v6.to_ipv4_mapped() {
            Some(a) => IpAddr::V4(a),
            None => IpAddr::V6(v6),
        }
    }

    #[test]
    fn the_table_answers_what_the_lapi_holds() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            // Templates: some share an id-less spelling, several types per address.
            let mut all: Vec<Template> = Vec::new();
            for i in 0..(4 + rng.below(10)) {
                let id = (rng.below(5) != 0).then_some(i + 1);
                if !all.is_empty() && id.is_some() && rng.below(3) == 0 {
                    // Another decision on the same value and type (another scenario, another
                    // id): each lives until its own deletion or expiry.
                    let mut twin = all[rng.below(all.len() as u64) as usize].clone();
                    twin.id = id;
                    all.push(twin);
                } else {
                    all.push(template(&mut rng, id));
                }
            }
            let mut probes: Vec<u128> = all
                .iter()
                .flat_map(|t| [t.first, t.last, t.first.wrapping_sub(1), t.last + 1])
                .collect();
            probes.sort_unstable();
            probes.dedup();

            let mut now: u32 = 1_000_000;
            let mut model = Model::default();
            let mut table = DecisionTable::default();
            let mut log = Vec::new();
            for step in 0..(5 + rng.below(25)) {
                now += rng.below(3) as u32;
                let mut new = Vec::new();
                let mut deleted = Vec::new();
                let mut adds = Vec::new();
                let mut dels = Vec::new();
                for _ in 0..(1 + rng.below(4)) {
                    let t = rng.below(all.len() as u64) as usize;
                    if rng.below(3) == 0 {
                        deleted.push(json(&all[t], "-1.5s"));
                        dels.push(t);
                    } else {
                        let secs = 1 + rng.below(10) as u32;
                        new.push(json(&all[t], &format!("{secs}.25s")));
                        // Durations are rounded up to whole seconds (a ban lasts at least as
                        // long as its decision): live through `now + secs`, gone at `+ 1`.
                        adds.push((t, now + secs + 1));
                    }
                }
                // The LAPI repeats a deletion in the next delta.
                if rng.below(4) == 0 {
                    if let Some(&t) = dels.first() {
                        deleted.push(json(&all[t], "-3s"));
                    }
                }
                let body = format!(
                    r#"{{"new":[{}],"deleted":[{}]}}"#,
                    new.join(","),
                    deleted.join(",")
                );
                log.push(body.clone());
                let parsed = parse_stream(body.as_bytes(), now).expect("valid body");
                assert_eq!(parsed.invalid + parsed.other_scope, 0, "{body}");
                table = table.apply(&parsed.delta);
                // Deletions before additions, as the table applies a delta.
                for t in dels {
                    model.delete(&all, t);
                }
                for (t, until) in adds {
                    model.add(&all, t, until);
                }
                if rng.below(3) == 0 {
                    if let Some(swept) = table.sweep(now) {
                        table = swept;
                    }
                }
                for look in [now, now + 1, now + 5] {
                    for &addr in &probes {
                        let got = table.lookup(probe_ip(addr), look);
                        let want = model.answer(&all, addr, look);
                        assert_eq!(
                            got,
                            want,
                            "seed {seed} step {step}: {} at now+{} \ntemplates: {all:#?}\ndeltas:\n{}",
                            probe_ip(addr),
                            look - now,
                            log.join("\n")
                        );
                    }
                }
            }
        }
    }
}
