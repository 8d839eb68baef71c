//! Shared inputs for the benches: deterministic decision sets and client addresses, and RSS
//! readings for the memory figures.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use jacker_gate::crowdsec::table::{Delta, Op, Remediation, Target};

/// Full-size inputs under `cargo bench`; small ones when `cargo test --all-targets` runs each
/// bench once, so the test suite stays quick.
pub(crate) fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// xorshift64*: deterministic and cheap, so runs are comparable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A public-looking IPv4 address (first octet 11..=222).
    pub(crate) fn v4(&mut self) -> Ipv4Addr {
        let x = self.next() as u32;
        Ipv4Addr::from((x % 0xD300_0000) + 0x0B00_0000)
    }

    pub(crate) fn v6(&mut self) -> Ipv6Addr {
        Ipv6Addr::from(
            (0x2001_0db8_u128 << 96)
                | u128::from(self.next()) << 32
                | u128::from(self.next() as u32),
        )
    }
}

/// `n` ban decisions: 99% single addresses, 1% ranges; 80% IPv4, 20% IPv6. Returns the delta
/// and the single addresses (for hits).
pub(crate) fn decisions(n: usize, now: u32) -> (Delta, Vec<IpAddr>) {
    let mut rng = Rng::new(42);
    let mut new = Vec::with_capacity(n);
    let mut singles = Vec::with_capacity(n);
    for i in 0..n {
        let v6 = i % 5 == 4;
        let target = if i % 100 == 99 {
            if v6 {
                let len = 48 + (rng.next() % 17) as u8;
                Target::Range(ipnet::IpNet::V6(
                    ipnet::Ipv6Net::new(rng.v6(), len).unwrap().trunc(),
                ))
            } else {
                let len = 16 + (rng.next() % 13) as u8;
                Target::Range(ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(rng.v4(), len).unwrap().trunc(),
                ))
            }
        } else {
            let ip = if v6 {
                IpAddr::V6(rng.v6())
            } else {
                IpAddr::V4(rng.v4())
            };
            singles.push(ip);
            Target::Ip(ip)
        };
        new.push(Op {
            // LAPI ids: sequential integers.
            id: new.len() as u64 + 1,
            target,
            kind: Remediation::Ban,
            until: now + 3600,
        });
    }
    (
        Delta {
            deleted: Vec::new(),
            new,
        },
        singles,
    )
}

/// Resident set size of this process in bytes, from /proc.
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
