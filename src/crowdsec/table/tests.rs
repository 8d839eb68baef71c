//! Unit tests of the decision table: lookups by IP and range, deletions by id, expiry, and applying deltas in parts.

use super::*;

const NOW: u32 = 1_000_000;

fn op(target: &str, kind: Remediation, ttl: u32) -> Op {
    let target = match target.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(ip),
        Err(_) => Target::Range(target.parse().unwrap()),
    };
    Op {
        id: synthetic_id(&target, kind),
        target,
        kind,
        until: NOW + ttl,
    }
}

fn lookup(t: &DecisionTable, ip: &str) -> Option<Remediation> {
    t.lookup(ip.parse().unwrap(), NOW)
}

#[test]
fn ips_ranges_and_kinds() {
    let t = DecisionTable::from_startup(&Delta {
        deleted: vec![],
        new: vec![
            op("1.2.3.4", Remediation::Ban, 60),
            op("10.0.0.0/24", Remediation::Ban, 60),
            op("2001:db8::1", Remediation::Ban, 60),
            op("2001:db8:1::/48", Remediation::Ban, 60),
            op("5.5.5.5", Remediation::Captcha, 60),
            op("5.5.5.5", Remediation::Ban, 60),
            op("6.6.6.6", Remediation::Captcha, 60),
            op("7.7.7.7", Remediation::Other, 60),
        ],
    });
    assert_eq!(lookup(&t, "1.2.3.4"), Some(Remediation::Ban));
    assert_eq!(lookup(&t, "1.2.3.5"), None);
    assert_eq!(lookup(&t, "10.0.0.0"), Some(Remediation::Ban));
    assert_eq!(lookup(&t, "10.0.0.77"), Some(Remediation::Ban));
    assert_eq!(lookup(&t, "10.0.0.255"), Some(Remediation::Ban));
    assert_eq!(lookup(&t, "10.0.1.0"), None);
    assert_eq!(lookup(&t, "9.255.255.255"), None);
    assert_eq!(lookup(&t, "2001:db8::1"), Some(Remediation::Ban));
    assert_eq!(lookup(&t, "2001:db8::2"), None);
    assert_eq!(lookup(&t, "2001:db8:1:ffff::9"), Some(Remediation::Ban));
    assert_eq!(
        lookup(&t, "5.5.5.5"),
        Some(Remediation::Ban),
        "ban wins over captcha"
    );
    assert_eq!(lookup(&t, "6.6.6.6"), Some(Remediation::Captcha));
    assert_eq!(lookup(&t, "7.7.7.7"), Some(Remediation::Other));
    let c = t.counts();
    assert_eq!(c.total(), 8);
    assert_eq!(c.ip[Remediation::Ban.index()], 3);
    assert_eq!(c.range[Remediation::Ban.index()], 2);
}

#[test]
fn deletions_are_idempotent_and_precede_additions() {
    let t = DecisionTable::from_startup(&Delta {
        deleted: vec![],
        new: vec![
            op("1.2.3.4", Remediation::Ban, 60),
            op("10.0.0.0/24", Remediation::Ban, 60),
        ],
    });
    let del = Delta {
        deleted: vec![
            op("1.2.3.4", Remediation::Ban, 0),
            op("10.0.0.0/24", Remediation::Ban, 0),
        ],
        new: vec![],
    };
    let t2 = t.apply(&del);
    assert_eq!(lookup(&t2, "1.2.3.4"), None);
    assert_eq!(lookup(&t2, "10.0.0.1"), None);
    assert_eq!(
        lookup(&t, "1.2.3.4"),
        Some(Remediation::Ban),
        "the old table is untouched"
    );
    let t3 = t2.apply(&del);
    assert_eq!(t3.counts().total(), 0);
    // A deletion repeated in the same delta as a re-add leaves the decision present.
    let t4 = t3.apply(&Delta {
        deleted: vec![op("1.2.3.4", Remediation::Ban, 0)],
        new: vec![op("1.2.3.4", Remediation::Ban, 60)],
    });
    assert_eq!(lookup(&t4, "1.2.3.4"), Some(Remediation::Ban));
    // Deleting the captcha of an IP keeps its ban.
    let t5 = t4
        .apply(&Delta {
            deleted: vec![],
            new: vec![op("1.2.3.4", Remediation::Captcha, 60)],
        })
        .apply(&Delta {
            deleted: vec![op("1.2.3.4", Remediation::Captcha, 0)],
            new: vec![],
        });
    assert_eq!(lookup(&t5, "1.2.3.4"), Some(Remediation::Ban));
    assert_eq!(t5.counts().total(), 1);
}

#[test]
fn applying_in_parts_equals_applying_at_once() {
    let mut new = Vec::new();
    for i in 0..2000u32 {
        new.push(op(
            &std::net::Ipv4Addr::from(0x0B00_0000 + i * 7919).to_string(),
            Remediation::Ban,
            60,
        ));
    }
    new.push(op("10.0.0.0/24", Remediation::Ban, 60));
    new.push(op("2001:db8::5", Remediation::Captcha, 60));
    let start = DecisionTable::from_startup(&Delta {
        deleted: vec![],
        new: new[..1000].to_vec(),
    });
    let delta = Delta {
        deleted: new[..500].to_vec(),
        new: new[1000..].to_vec(),
    };
    let whole = start.apply(&delta);
    let mut stepped = start.clone();
    for part in 0..8 {
        stepped = stepped.apply_part(&delta, part, 8);
    }
    assert_eq!(stepped.counts(), whole.counts());
    for o in &new {
        let ip = match o.target {
            Target::Ip(ip) => ip,
            Target::Range(n) => n.addr(),
        };
        assert_eq!(stepped.lookup(ip, NOW), whole.lookup(ip, NOW), "{ip}");
    }
    assert_eq!(whole.counts().total(), 1502);
}

#[test]
fn local_expiry_and_sweep() {
    let t = DecisionTable::from_startup(&Delta {
        deleted: vec![],
        new: vec![
            op("1.2.3.4", Remediation::Ban, 10),
            op("1.2.3.5", Remediation::Ban, 100),
            op("10.0.0.0/8", Remediation::Ban, 10),
        ],
    });
    assert_eq!(
        t.lookup("1.2.3.4".parse().unwrap(), NOW + 9),
        Some(Remediation::Ban)
    );
    assert_eq!(t.lookup("1.2.3.4".parse().unwrap(), NOW + 10), None);
    assert_eq!(t.lookup("10.1.1.1".parse().unwrap(), NOW + 10), None);
    assert!(t.sweep(NOW + 5).is_none(), "nothing expired yet");
    let swept = t.sweep(NOW + 10).expect("two decisions expired");
    assert_eq!(swept.counts().total(), 1);
    assert_eq!(
        swept.lookup("1.2.3.5".parse().unwrap(), NOW + 10),
        Some(Remediation::Ban)
    );
}

#[test]
fn nested_ranges_flatten() {
    let t = DecisionTable::from_startup(&Delta {
        deleted: vec![],
        new: vec![
            op("10.0.0.0/8", Remediation::Captcha, 60),
            op("10.1.0.0/16", Remediation::Ban, 60),
            op("10.1.2.0/24", Remediation::Captcha, 60),
            op("10.255.255.0/24", Remediation::Ban, 60),
            op("0.0.0.0/0", Remediation::Other, 5),
            op("255.255.255.255/32", Remediation::Ban, 60),
        ],
    });
    assert_eq!(lookup(&t, "10.0.0.1"), Some(Remediation::Other));
    assert_eq!(
        t.lookup("10.0.0.1".parse().unwrap(), NOW + 6),
        Some(Remediation::Captcha)
    );
    assert_eq!(
        t.lookup("10.1.2.3".parse().unwrap(), NOW + 6),
        Some(Remediation::Ban)
    );
    assert_eq!(
        t.lookup("10.1.3.3".parse().unwrap(), NOW + 6),
        Some(Remediation::Ban)
    );
    assert_eq!(
        t.lookup("10.2.0.0".parse().unwrap(), NOW + 6),
        Some(Remediation::Captcha)
    );
    assert_eq!(
        t.lookup("10.255.255.9".parse().unwrap(), NOW + 6),
        Some(Remediation::Ban)
    );
    assert_eq!(t.lookup("11.0.0.0".parse().unwrap(), NOW + 6), None);
    assert_eq!(
        t.lookup("255.255.255.255".parse().unwrap(), NOW + 6),
        Some(Remediation::Ban)
    );
    assert_eq!(t.lookup("255.255.255.254".parse().unwrap(), NOW + 6), None);
}

#[test]
fn flatten_matches_brute_force() {
    // Random nested or disjoint CIDRs over a small space, checked address by address.
    let mut seed = 0x1234_5678_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50 {
        let mut ranges = HashMap::new();
        for _ in 0..(next() % 12) {
            let len = 24 + (next() % 9) as u8;
            let addr = std::net::Ipv4Addr::from(0x0A00_0000 | (next() as u32 & 0xFF));
            let net = ipnet::Ipv4Net::new(addr, len).unwrap().trunc();
            let d = Decision {
                id: next(),
                kind: Remediation::ALL[(next() % 3) as usize],
                until: NOW + 1 + (next() % 5) as u32,
            };
            ranges
                .entry(IpNet::V4(net))
                .or_insert_with(Vec::new)
                .push(d);
        }
        let r = {
            let mut r = Ranges {
                source: ranges.clone(),
                ..Ranges::default()
            };
            r.rebuild();
            r
        };
        for a in 0x0A00_0000u32 - 2..=0x0A00_0101 {
            let ip = IpAddr::V4(a.into());
            let want = ranges
                .iter()
                .filter(|(n, _)| n.contains(&ip))
                .fold(Slots::default(), |acc, (_, s)| acc.max(slots_of(s)));
            let got = r.lookup(ip).unwrap_or_default();
            assert_eq!(got, want, "{ip} in {ranges:?}");
        }
    }
}
