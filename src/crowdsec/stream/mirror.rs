//! The mirror property (step 2 of the decision: the gate answers what the LAPI would): random sequences of stream deltas, in every spelling the
//! LAPI sends, go through the parser into the decision table and into a plain reference model
//! of the LAPI (a list of decisions, each living until its own deletion or expiry); for every
//! probed address at every step, the table answers what the model does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::super::table::{DecisionTable, Remediation};
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

fn kind_of(kind: &str) -> Remediation {
    Remediation::from_type(kind)
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

    fn answer(&self, all: &[Template], addr: u128, now: u32) -> Option<Remediation> {
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
