//! The LAPI wire format: `/v1/decisions/stream` and `/v1/decisions?ip=` bodies into table ops.
//!
//! Invariants: a body that does not parse as a whole is rejected as a whole (never half
//! applied); `null` and `[]` lists, unknown fields and Go durations with nanoseconds are
//! accepted; a single decision that makes no sense (unknown scope, bad value, bad duration) is
//! skipped and counted, and does not poison the rest of the answer.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::table::{synthetic_id, Delta, Op, Remediation, Target};
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
    /// The deletions and additions to apply.
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
    /// The decision's scope (`Ip`, `Range`, `Country`, ...).
    pub scope: String,
    /// The decision's value (an address, a range, a country code, ...).
    pub value: String,
    /// Why it was skipped, for the log.
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
    /// Not JSON, or JSON of another shape than the LAPI's.
    #[error("invalid LAPI response: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
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
pub fn parse_live(body: &[u8], now: u32) -> Result<Option<Remediation>, BadBody> {
    let raw: Option<Vec<RawDecision<'_>>> = serde_json::from_slice(body)?;
    let mut parsed = Parsed::default();
    let mut best: Option<Remediation> = None;
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

fn rank(k: Remediation) -> u8 {
    match k {
        Remediation::Ban => 0,
        Remediation::Other => 1,
        Remediation::Captcha => 2,
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
    let kind = Remediation::from_type(kind);
    Some(Op {
        id: d.id.unwrap_or_else(|| synthetic_id(&target, kind)),
        target,
        kind,
        until,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mirror;
