//! The LAPI wire format: `/v1/decisions/stream` and `/v1/decisions?ip=` bodies into table ops.
//!
//! Invariants: a body that does not parse as a whole is rejected as a whole (never half
//! applied); `null` and `[]` lists, unknown fields and Go durations with nanoseconds are
//! accepted; a single decision that makes no sense (unknown scope, bad value, bad duration) is
//! skipped and counted, and does not poison the rest of the answer.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::table::{Delta, Kind, Op, Target};
use crate::client_ip::canonical;
use crate::config::parse_net;
use crate::duration::parse_go_seconds;

#[derive(Deserialize)]
struct RawDecision<'a> {
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

fn convert(d: &RawDecision<'_>, now: u32, adding: bool, parsed: &mut Parsed) -> Option<Op> {
    let (Some(scope), Some(value), Some(kind)) = (&d.scope, &d.value, &d.kind) else {
        parsed.invalid += 1;
        return None;
    };
    let target = if scope.eq_ignore_ascii_case("ip") {
        match value.trim().parse::<IpAddr>() {
            Ok(ip) => Target::Ip(canonical(ip)),
            Err(_) => {
                parsed.invalid += 1;
                return None;
            }
        }
    } else if scope.eq_ignore_ascii_case("range") {
        match parse_net(value) {
            Some(net) if value.contains('/') => Target::Range(net),
            _ => {
                parsed.invalid += 1;
                return None;
            }
        }
    } else {
        parsed.other_scope += 1;
        return None;
    };
    let until = if adding {
        let secs = match d.duration.as_deref().map(parse_go_seconds) {
            Some(Ok(s)) => s,
            _ => {
                parsed.invalid += 1;
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
    Some(Op {
        target,
        kind: Kind::from_type(kind),
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
        assert_eq!(p.invalid, 3);
        assert_eq!(p.delta.deleted.len(), 1);
        assert_eq!(
            p.delta.new,
            vec![
                Op {
                    target: Target::Ip("1.2.3.4".parse().unwrap()),
                    kind: Kind::Ban,
                    until: NOW + 3599
                },
                Op {
                    target: Target::Range("10.0.0.0/24".parse().unwrap()),
                    kind: Kind::Captcha,
                    until: NOW + 10_800
                },
                Op {
                    target: Target::Ip("5.6.7.8".parse().unwrap()),
                    kind: Kind::Ban,
                    until: NOW + 3600
                },
                Op {
                    target: Target::Range("2001:db8::/32".parse().unwrap()),
                    kind: Kind::Other,
                    until: NOW + 3600
                },
            ]
        );
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
