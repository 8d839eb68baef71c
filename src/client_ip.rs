//! Who the client is: the `X-Forwarded-For` walk over trusted proxies (step 1 of the decision).
//!
//! Invariants: a header is only believed when the TCP peer is a trusted proxy; the walk goes
//! right to left and stops at the first untrusted address, so a client can prepend whatever it
//! likes without changing the answer; IPv4-mapped IPv6 addresses are compared as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Parses `10.0.0.0/8` or a bare address (as a single-address network). IPv4-mapped IPv6
/// networks are stored as IPv4, since client addresses are compared after the same mapping.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.trim().parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.trim().parse::<std::net::IpAddr>().ok()?),
    };
    Some(match net {
        IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
            Some(v4) if n.prefix_len() >= 96 => {
                IpNet::V4(ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).ok()?.trunc())
            }
            _ => IpNet::V6(n.trunc()),
        },
        IpNet::V4(n) => IpNet::V4(n.trunc()),
    })
}

/// The networks allowed to set `X-Forwarded-*`, kept split by family for a cheap scan.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl TrustedProxies {
    /// The networks whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub fn new(nets: &[IpNet]) -> Self {
        let mut t = Self::default();
        for net in nets {
            match net {
                IpNet::V4(n) => t.v4.push((u32::from(n.network()), u32::from(n.netmask()))),
                IpNet::V6(n) => {
                    t.v6.push((u128::from(n.network()), u128::from(n.netmask())))
                }
            }
        }
        t
    }

    /// `ip` must be canonical (see [`canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }
}

/// Maps IPv4-mapped IPv6 (`::ffff:1.2.3.4`) to IPv4; every other address is returned as is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry where the walk stopped was not an address (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unparseable X-Forwarded-For entry")]
pub struct BadForwardedFor;

/// The client address. `forwarded_for` holds the raw values of every `X-Forwarded-For` header
/// line in order; it is ignored unless `peer` is trusted.
pub fn client_ip<'a, I>(
    peer: IpAddr,
    forwarded_for: I,
    trusted: &TrustedProxies,
) -> Result<IpAddr, BadForwardedFor>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for line in forwarded_for.rev() {
        for entry in line.rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() && line.trim_ascii().is_empty() {
                // An empty header line carries no hop at all.
                continue;
            }
            let ip = parse_entry(entry).ok_or(BadForwardedFor)?;
            if !trusted.contains(ip) {
                return Ok(ip);
            }
            // Every entry so far is trusted; if all are, the left-most one is the client.
            client = ip;
        }
    }
    Ok(client)
}

/// Parses one entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`. Anything else (names, `unknown`, junk) is `None`.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| canonical(IpAddr::V6(a)));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // `a.b.c.d:port`: only IPv4 carries a port without brackets.
    let (addr, port) = text.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(&[
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ])
    }

    fn check(peer: &str, headers: &[&str], want: Result<&str, BadForwardedFor>) {
        let lines: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
        let got = client_ip(peer.parse().unwrap(), lines.into_iter(), &trusted());
        let want = want.map(|w| w.parse::<IpAddr>().unwrap());
        assert_eq!(got, want, "peer {peer} headers {headers:?}");
    }

    #[test]
    fn spoofing_table() {
        let bad = Err(BadForwardedFor);
        let table: &[(&str, &[&str], Result<&str, BadForwardedFor>)] = &[
            // No header: the peer.
            ("10.0.0.1", &[], Ok("10.0.0.1")),
            // The right-most untrusted entry is the client; a spoofed left-most one is ignored.
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4"], Ok("1.2.3.4")),
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4, 10.0.0.7"], Ok("1.2.3.4")),
            ("10.0.0.1", &["6.6.6.6", "1.2.3.4"], Ok("1.2.3.4")),
            // Peer not trusted: every header is ignored.
            ("8.8.8.8", &["1.2.3.4"], Ok("8.8.8.8")),
            ("8.8.8.8", &["garbage"], Ok("8.8.8.8")),
            // All trusted: the left-most.
            ("10.0.0.1", &["10.1.1.1, 192.168.1.1"], Ok("10.1.1.1")),
            // Garbage where the walk stops: 400; garbage left of the client: never read.
            ("10.0.0.1", &["garbage"], bad),
            ("10.0.0.1", &["garbage, 1.2.3.4"], Ok("1.2.3.4")),
            ("10.0.0.1", &["1.2.3.4, garbage"], bad),
            ("10.0.0.1", &["1.2.3.4,,"], bad),
            ("10.0.0.1", &["1.2.3.4, , 10.0.0.2"], bad),
            ("10.0.0.1", &["unknown"], bad),
            ("10.0.0.1", &["1.2.3.4 5.6.7.8"], bad),
            ("10.0.0.1", &["example.com"], bad),
            ("10.0.0.1", &["1.2.3.4/24"], bad),
            ("10.0.0.1", &["01.2.3.4"], bad),
            // An empty header line is no hop.
            ("10.0.0.1", &[""], Ok("10.0.0.1")),
            ("10.0.0.1", &["  "], Ok("10.0.0.1")),
            // Ports and brackets.
            ("10.0.0.1", &["1.2.3.4:5678"], Ok("1.2.3.4")),
            ("10.0.0.1", &["[2001:db8::1]:443"], Ok("2001:db8::1")),
            ("10.0.0.1", &["[2001:db8::1]"], Ok("2001:db8::1")),
            ("10.0.0.1", &["2001:db8::1"], Ok("2001:db8::1")),
            ("10.0.0.1", &["1.2.3.4:99999"], bad),
            ("10.0.0.1", &["1.2.3.4:"], bad),
            ("10.0.0.1", &["[2001:db8::1]x"], bad),
            ("10.0.0.1", &["[1.2.3.4]"], bad),
            // IPv4-mapped IPv6 is IPv4, for the peer and for entries.
            ("::ffff:10.0.0.1", &["1.2.3.4"], Ok("1.2.3.4")),
            ("10.0.0.1", &["::ffff:1.2.3.4"], Ok("1.2.3.4")),
            ("10.0.0.1", &["::ffff:10.9.9.9, 1.2.3.4"], Ok("1.2.3.4")),
            ("10.0.0.1", &["1.2.3.4, ::ffff:10.9.9.9"], Ok("1.2.3.4")),
            ("::ffff:8.8.8.8", &["1.2.3.4"], Ok("8.8.8.8")),
            // IPv6 proxies.
            ("fd00::1", &["2001:db8::5, fd00::2"], Ok("2001:db8::5")),
            ("2001:db8::9", &["1.2.3.4"], Ok("2001:db8::9")),
        ];
        for (peer, headers, want) in table {
            check(peer, headers, *want);
        }
    }

    #[test]
    fn thousand_entries() {
        let mut spoofed: Vec<String> = (0..998)
            .map(|i| format!("6.6.{}.{}", i / 256, i % 256))
            .collect();
        spoofed.push("1.2.3.4".into());
        spoofed.push("10.0.0.9".into());
        let header = spoofed.join(", ");
        check("10.0.0.1", &[header.as_str()], Ok("1.2.3.4"));
        let all_trusted: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let header = all_trusted.join(",");
        check("10.0.0.1", &[header.as_str()], Ok("10.0.0.0"));
    }

    #[test]
    fn invalid_bytes() {
        let lines: Vec<&[u8]> = vec![b"1.2.3.4\xff"];
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), lines.into_iter(), &trusted()),
            Err(BadForwardedFor)
        );
    }
}
