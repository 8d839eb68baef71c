//! The property checks behind every fuzz target, written once: the targets in `fuzz_targets/`
//! call them on fuzzer input, and `tests/gate/fuzz_regressions.rs` includes this file by path to
//! replay the committed corpus through the same checks in the normal `cargo test`.
//!
//! Each check takes raw bytes and panics (with the input in the message) when its property
//! fails. Inputs are `\n`-separated fields, so corpus files stay readable and seeds can be
//! written by hand; bytes that must be text are decoded lossily, never unchecked. The only
//! dependencies are the gate itself and crates it already uses (`ipnet`, `toml`, `url`), so the
//! replay compiles in the main crate's tests without new dev-dependencies.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use jacker_gate::client_ip::{canonical, client_ip as walk, BadForwardedFor, TrustedProxies};
use jacker_gate::config::{self, parse_net, RateKeyKind, RateLimit};
use jacker_gate::crowdsec::stream::{parse_live, parse_stream};
use jacker_gate::crowdsec::table::{Delta, Target};
use jacker_gate::crowdsec::{DecisionTable, Remediation};
use jacker_gate::decision::{
    decide, rate_key, BadRequest, CrowdsecState, Forwarded, Step, Verdict,
};
use jacker_gate::domain::{DomainName, RedirectDomain};
use jacker_gate::oauth::email::{normalize, EmailPolicy, EmailVerdict};
use jacker_gate::oauth::redirect::RedirectPolicy;
use jacker_gate::ratelimit::{Limiter, Outcome};
use jacker_gate::rules::{
    normalize_host, normalize_path, HostPattern, PathPrefix, Policy, Rule, Rules,
};
use jacker_gate::session::cookie::{cookie_values, CookieCodec, Purpose};
use url::{Host, Url};

/// A property check over one fuzzer input.
pub type Check = fn(&[u8]);

/// Every check, by target name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("client_ip", client_ip),
    ("lapi_stream", lapi_stream),
    ("session_cookie", session_cookie),
    ("redirect", redirect),
    ("email_policy", email_policy),
    ("config", config),
    ("decision", decision),
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
}

/// A peer address: the field parsed as an address, or else one of a few picked by its length
/// (so mutations that break the text still reach trusted and untrusted peers of both families).
fn peer(field: &[u8]) -> IpAddr {
    const POOL: [&str; 6] = [
        "10.0.0.1",
        "1.2.3.4",
        "::ffff:10.0.0.2",
        "fd00::1",
        "2001:db8::7",
        "127.0.0.1",
    ];
    text(field).trim().parse().unwrap_or_else(|_| {
        POOL[field.len() % POOL.len()]
            .parse()
            .expect("valid literal")
    })
}

fn default_trusted() -> Vec<IpNet> {
    ["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"]
        .iter()
        .map(|n| n.parse().expect("valid literal"))
        .collect()
}

/// One `X-Forwarded-For` entry as the module documents it: `1.2.3.4`, `1.2.3.4:5678`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, compared canonically.
fn forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    fn port(p: &str) -> bool {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    }
    let s = std::str::from_utf8(entry).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let after = &rest[close + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port)) {
            return None;
        }
        return rest[..close]
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| canonical(IpAddr::V6(a)));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (addr, p) = s.rsplit_once(':')?;
    if !port(p) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `client_ip`. Input: line 1 the TCP peer, line 2 the trusted networks (comma-separated, read
/// as the config reads them; the default set when none parse), every further line one
/// `X-Forwarded-For` header line.
///
/// Property: never panics; an untrusted peer is the answer whatever the headers say; otherwise
/// the answer is the peer or an address written in a header, found by walking right to left and
/// stopping at the first untrusted entry (unparseable there: an error; left of it: never read);
/// an address inside `trusted_proxies` is the answer only when every entry is trusted.
pub fn client_ip(data: &[u8]) {
    let mut fields = lines(data);
    let peer = peer(fields.next().unwrap_or_default());
    let nets: Vec<IpNet> = text(fields.next().unwrap_or_default())
        .split(',')
        .filter_map(parse_net)
        .collect();
    let nets = if nets.is_empty() {
        default_trusted()
    } else {
        nets
    };
    let headers: Vec<&[u8]> = fields.collect();
    let got = walk(peer, headers.iter().copied(), &TrustedProxies::new(&nets));

    let trusted = |ip: IpAddr| nets.iter().any(|n| n.contains(&ip));
    let peer = canonical(peer);
    let shown = || {
        format!(
            "peer {peer} trusted {nets:?} headers {:?}",
            lossy_all(&headers)
        )
    };
    if !trusted(peer) {
        assert_eq!(got, Ok(peer), "untrusted peer: {}", shown());
        return;
    }
    // Entries right to left, as the walk reads them; a whitespace-only line holds none.
    let entries: Vec<Option<IpAddr>> = headers
        .iter()
        .rev()
        .filter(|l| !l.trim_ascii().is_empty())
        .flat_map(|l| l.rsplit(|&b| b == b','))
        .map(|e| forwarded_entry(e.trim_ascii()))
        .collect();
    if let Ok(ip) = got {
        assert!(
            ip == peer || entries.contains(&Some(ip)),
            "{ip} is neither the peer nor in a header: {}",
            shown()
        );
        if trusted(ip) {
            assert!(
                entries.iter().all(|e| e.is_some_and(trusted)),
                "trusted {ip} returned though an entry is untrusted or junk: {}",
                shown()
            );
        }
    }
    let want = match entries.iter().find(|e| !e.is_some_and(trusted)) {
        Some(None) => Err(BadForwardedFor),
        Some(Some(ip)) => Ok(*ip),
        None => Ok(entries.last().copied().flatten().unwrap_or(peer)),
    };
    assert_eq!(got, want, "walk: {}", shown());
}

fn lossy_all(lines: &[&[u8]]) -> Vec<String> {
    lines.iter().map(|l| text(l)).collect()
}

/// The clock of the `lapi_stream` check, in Unix seconds.
pub const NOW: u32 = 1_700_000_000;

/// The decision table as a brute-force model: (target as a network, is it a range) → expiry
/// per kind, in the table's strength order (ban, other, captcha).
#[derive(Default, Clone)]
struct TableModel(HashMap<(IpNet, bool), [u32; 3]>);

const KINDS: [Remediation; 3] = [Remediation::Ban, Remediation::Other, Remediation::Captcha];

fn kind_index(k: Remediation) -> usize {
    KINDS
        .iter()
        .position(|&x| x == k)
        .expect("every kind is listed")
}

fn target_key(t: Target) -> (IpNet, bool) {
    match t {
        Target::Ip(ip) => (IpNet::from(ip), false),
        Target::Range(net) => (net, true),
    }
}

impl TableModel {
    fn apply(&mut self, delta: &Delta) {
        for op in &delta.deleted {
            let key = target_key(op.target);
            if let Some(slots) = self.0.get_mut(&key) {
                slots[kind_index(op.kind)] = 0;
                if *slots == [0; 3] {
                    self.0.remove(&key);
                }
            }
        }
        for op in &delta.new {
            let slot = &mut self.0.entry(target_key(op.target)).or_default()[kind_index(op.kind)];
            *slot = (*slot).max(op.until);
        }
    }

    fn lookup(&self, ip: IpAddr, now: u32) -> Option<Remediation> {
        let mut best = [0u32; 3];
        for ((net, _), slots) in &self.0 {
            if net.contains(&ip) {
                for i in 0..3 {
                    best[i] = best[i].max(slots[i]);
                }
            }
        }
        (0..3).find(|&i| best[i] > now).map(|i| KINDS[i])
    }

    fn counts(&self, range: bool) -> [u64; 3] {
        let mut c = [0; 3];
        for ((_, r), slots) in &self.0 {
            if *r == range {
                for i in 0..3 {
                    c[i] += u64::from(slots[i] != 0);
                }
            }
        }
        c
    }

    fn any_expired(&self, now: u32) -> bool {
        self.0.values().flatten().any(|&u| u != 0 && u <= now)
    }

    fn sweep(&mut self, now: u32) {
        self.0.retain(|_, slots| {
            for u in slots.iter_mut() {
                if *u <= now {
                    *u = 0;
                }
            }
            *slots != [0; 3]
        });
    }

    /// Addresses worth asking about: every single address, and each range's first and last
    /// address with their neighbours (where flattened segments start and end).
    fn probes(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for (net, _) in self.0.keys() {
            for a in [net.network(), net.broadcast()] {
                out.push(a);
                out.extend(step(a, -1));
                out.extend(step(a, 1));
            }
        }
        out.truncate(512);
        out.into_iter().map(canonical).collect()
    }

    /// Clocks worth asking at: now, and just before and at each expiry.
    fn clocks(&self) -> Vec<u32> {
        let mut out = vec![NOW];
        for &u in self.0.values().flatten() {
            if u != 0 && out.len() < 9 {
                out.push(u - 1);
                out.push(u);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn compare(&self, table: &DecisionTable, what: &str, body: &[u8]) {
        let counts = table.counts();
        let shown = || format!("{what} after {:?}", text(body));
        assert_eq!(counts.ip, self.counts(false), "ip counts, {}", shown());
        assert_eq!(counts.range, self.counts(true), "range counts, {}", shown());
        let probes = self.probes();
        for now in self.clocks() {
            for &ip in &probes {
                assert_eq!(
                    table.lookup(ip, now),
                    self.lookup(ip, now),
                    "lookup {ip} at {now}, {}",
                    shown()
                );
            }
        }
    }
}

fn step(ip: IpAddr, by: i8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_add_signed(by.into())
            .map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => {
            let n = u128::from(a);
            let n = if by < 0 {
                n.checked_sub(1)
            } else {
                n.checked_add(1)
            };
            n.map(|n| IpAddr::V6(n.into()))
        }
    }
}

/// `lapi_stream`. Input: one or more LAPI bodies separated by NUL bytes (which no JSON holds);
/// the first parsed stream answer builds the table as at startup, each later one is applied
/// as an update. Every body is also read as a live-mode answer.
///
/// Property: `parse_stream` and `parse_live` never panic, at any clock; every address they
/// yield is canonical; applying a parsed delta, looking up and sweeping never panic; every Ip
/// decision added with `until > now` is found by `lookup` at `now`; and the table answers every
/// lookup (at each expiry and just before it), its counts and its sweeps exactly as a
/// brute-force model of the decisions would.
pub fn lapi_stream(data: &[u8]) {
    for now in [0, NOW, u32::MAX] {
        let _ = parse_stream(data, now);
        let _ = parse_live(data, now);
    }
    let mut table: Option<DecisionTable> = None;
    let mut model = TableModel::default();
    for body in data.split(|&b| b == 0) {
        let _ = parse_live(body, NOW);
        let Ok(parsed) = parse_stream(body, NOW) else {
            continue;
        };
        let delta = &parsed.delta;
        for op in delta.deleted.iter().chain(&delta.new) {
            if let Target::Ip(ip) = op.target {
                assert_eq!(
                    canonical(ip),
                    ip,
                    "non-canonical {ip} from {:?}",
                    text(body)
                );
            }
        }
        let next = match &table {
            None => DecisionTable::from_startup(delta),
            Some(t) => t.apply(delta),
        };
        model.apply(delta);
        for op in &delta.new {
            if let (Target::Ip(ip), true) = (op.target, op.until > NOW) {
                assert!(
                    next.lookup(ip, NOW).is_some(),
                    "{ip} added until {} is not found at {NOW}: {:?}",
                    op.until,
                    text(body)
                );
            }
        }
        model.compare(&next, "apply", body);
        table = Some(next);
    }
    let Some(table) = table else { return };
    for at in model.clocks() {
        let mut swept = model.clone();
        swept.sweep(at);
        match table.sweep(at) {
            None => assert!(
                !model.any_expired(at),
                "sweep at {at} found nothing though a decision expired: {:?}",
                text(data)
            ),
            Some(t) => {
                assert!(
                    model.any_expired(at),
                    "sweep at {at} changed a table with nothing expired"
                );
                swept.compare(&t, &format!("sweep at {at}"), data);
            }
        }
    }
}

const COOKIE_SECRET: &[u8; 32] = b"jacker-gate fuzz cookie secret!!";
const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn other(p: Purpose) -> Purpose {
    match p {
        Purpose::Session => Purpose::LoginBinding,
        Purpose::LoginBinding => Purpose::Session,
    }
}

/// `session_cookie`. Input: a cookie value (read lossily); its bytes also pick an id to sign,
/// the purpose, and the bytes that replace each byte of the signed value in turn. Every line is
/// also read as a `Cookie` header.
///
/// Property: never panics; any input verifies only if it is exactly what `sign` produces for
/// the id it yields and that purpose (so no other encoding, key or purpose passes); a signed
/// value verifies for its own purpose only, and not under another secret; changing any byte,
/// dropping one or adding one never verifies, for either purpose.
pub fn session_cookie(data: &[u8]) {
    let codec = CookieCodec::new(COOKIE_SECRET);
    let value = text(data);
    for p in [Purpose::Session, Purpose::LoginBinding] {
        if let Some(id) = codec.verify(p, &value) {
            assert_eq!(
                codec.sign(p, id),
                value,
                "verified as {p:?} but not a signature"
            );
            assert_eq!(
                codec.verify(other(p), &value),
                None,
                "verified for both purposes"
            );
        }
    }

    let id: String = (0..43)
        .map(|i| {
            let b = data.get(i).copied().unwrap_or(i as u8);
            char::from(ID_ALPHABET[usize::from(b) % 64])
        })
        .collect();
    let purpose = if data.len() % 2 == 0 {
        Purpose::Session
    } else {
        Purpose::LoginBinding
    };
    let signed = codec.sign(purpose, &id);
    assert_eq!(codec.verify(purpose, &signed), Some(id.as_str()));
    assert_eq!(codec.verify(other(purpose), &signed), None, "{signed}");
    let stranger = CookieCodec::new(b"another secret, another gate....");
    assert_eq!(stranger.verify(purpose, &signed), None, "{signed}");

    let never = |changed: Vec<u8>, how: &str| {
        if let Ok(s) = String::from_utf8(changed) {
            for p in [Purpose::Session, Purpose::LoginBinding] {
                assert_eq!(
                    codec.verify(p, &s),
                    None,
                    "{how} of {signed:?} verifies: {s:?}"
                );
            }
        }
    };
    let bytes = signed.as_bytes();
    let first = data.first().copied().unwrap_or(b'A');
    for i in 0..bytes.len() {
        for r in [first, first ^ 1] {
            if bytes[i] != r {
                let mut changed = bytes.to_vec();
                changed[i] = r;
                never(changed, "a changed byte");
            }
        }
    }
    let at = data.get(1).map_or(0, |&b| usize::from(b) % bytes.len());
    let mut dropped = bytes.to_vec();
    dropped.remove(at);
    never(dropped, "a dropped byte");
    let mut added = bytes.to_vec();
    added.insert(at, data.get(2).copied().unwrap_or(b'A'));
    never(added, "an added byte");
    never(bytes[..at].to_vec(), "a truncation");

    for v in cookie_values(lines(data), "_jg") {
        assert!(!v.contains(';'), "cookie value {v:?} spans a ';'");
    }
}

/// The `redirect_domains` of the `redirect` check.
pub const REDIRECT_DOMAINS: [&str; 4] = [
    ".example.com",
    "app.other.org:8443",
    "exact.test",
    "10.0.0.5",
];

/// `redirect`. Input: line 1 the `rd` value; line 2, if present, the origin's scheme and line 3
/// its host (the request that triggered the login). Checked against [`REDIRECT_DOMAINS`], with
/// `allow_http` off and on.
///
/// Property: never panics; a `Some(url)` has scheme https (http only when `allow_http`), no
/// user info, a domain or IPv4 host that equals an entry or is a subdomain of a `.` entry (on a
/// label boundary), and the entry's port (or the scheme's default); and the URL, printed as a
/// `Location` header and parsed again, is the same URL.
pub fn redirect(data: &[u8]) {
    let mut fields = data.splitn(3, |&b| b == b'\n');
    let rd = text(fields.next().unwrap_or_default());
    let scheme = fields.next().map(text);
    let host = fields.next().map(text).unwrap_or_default();
    let origin = scheme.as_deref().map(|s| (s, host.as_str()));
    let domains: Vec<RedirectDomain> = REDIRECT_DOMAINS
        .iter()
        .map(|d| RedirectDomain::parse(d).expect("valid literal"))
        .collect();
    for allow_http in [false, true] {
        let Some(url) = RedirectPolicy::new(&domains, allow_http).check(&rd, origin) else {
            continue;
        };
        let shown = format!("rd {rd:?} origin {origin:?} allow_http {allow_http} → {url}");
        assert!(
            url.scheme() == "https" || (allow_http && url.scheme() == "http"),
            "scheme: {shown}"
        );
        assert!(
            url.username().is_empty() && url.password().is_none(),
            "user info: {shown}"
        );
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(Host::Ipv4(a)) => a.to_string(),
            other => panic!("host {other:?}: {shown}"),
        };
        let port = url.port_or_known_default();
        let default = if url.scheme() == "https" { 443 } else { 80 };
        let listed = REDIRECT_DOMAINS.iter().any(|entry| {
            let (sub, rest) = match entry.strip_prefix('.') {
                Some(r) => (true, r),
                None => (false, *entry),
            };
            let (name, want_port) = match rest.split_once(':') {
                Some((n, p)) => (n, p.parse().expect("valid literal")),
                None => (rest, default),
            };
            (host == name || (sub && host.ends_with(&format!(".{name}"))))
                && port == Some(want_port)
        });
        assert!(listed, "host or port not allowed: {shown}");
        let again = Url::parse(url.as_str());
        assert_eq!(again.as_ref(), Ok(&url), "re-parsed differently: {shown}");
    }
}

fn list(field: Option<&[u8]>, default: &[&str]) -> Vec<String> {
    match field {
        None => default.iter().map(|s| s.to_string()).collect(),
        Some([]) => Vec::new(),
        Some(f) => text(f).split(',').map(str::to_owned).collect(),
    }
}

/// `email_policy`. Input: line 1 the email; line 2 `email_verified` (`1`/`t` true, `0`/`f`
/// false, else missing); line 3 `require_hd` (any byte: on); line 4 the allowed domains and
/// line 5 the allowed emails, comma-separated (missing: `example.com` and
/// `contractor@gmail.com`; empty: none); line 6, if present, the `hd` claim.
///
/// Property: never panics; `Allowed` implies `verified == Some(true)`, exactly one `@`, and
/// either the whole address (lower-cased) is in `allowed_emails` or the part after the `@`
/// equals an allowed domain exactly, and then, with `require_hd`, `hd` equals that domain;
/// anything not verified is `Unverified`; `allows_session` admits the same way; `normalize`
/// yields the lower-cased address only for a plain `local@domain`.
pub fn email_policy(data: &[u8]) {
    let mut fields = lines(data);
    let email = text(fields.next().unwrap_or_default());
    let verified = match fields.next().and_then(|f| f.first()) {
        Some(b'1' | b't') => Some(true),
        Some(b'0' | b'f') => Some(false),
        _ => None,
    };
    let require_hd = fields.next().is_some_and(|f| !f.is_empty());
    let domains = list(fields.next(), &["example.com"]);
    let emails = list(fields.next(), &["contractor@gmail.com"]);
    let hd = fields.next().map(text);

    // Entries the config loader would refuse never reach the policy.
    let domains: Vec<DomainName> = domains
        .iter()
        .filter_map(|d| DomainName::parse(d).ok())
        .collect();
    let policy = EmailPolicy::new(&domains, &emails, require_hd);
    let verdict = policy.check(&email, verified, hd.as_deref());
    let shown = format!(
        "{email:?} verified {verified:?} hd {hd:?} require_hd {require_hd} domains {domains:?} emails {emails:?} → {verdict:?}"
    );
    let lower = email.to_ascii_lowercase();
    let domain = lower.split_once('@').map_or("", |(_, d)| d);
    let by_email = emails.iter().any(|e| e.to_ascii_lowercase() == lower);
    let by_domain = domains.iter().any(|d| d.as_str() == domain);
    if verified != Some(true) {
        assert_eq!(verdict, EmailVerdict::Unverified, "{shown}");
    }
    if verdict == EmailVerdict::Allowed {
        assert_eq!(email.matches('@').count(), 1, "{shown}");
        assert!(by_email || by_domain, "{shown}");
        if require_hd && !by_email {
            assert!(
                hd.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(domain)),
                "hd: {shown}"
            );
        }
    }
    if policy.allows_session(&email) {
        assert_eq!(email.matches('@').count(), 1, "session {shown}");
        assert!(by_email || by_domain, "session {shown}");
    }
    if let Some(n) = normalize(&email) {
        assert_eq!(n, lower, "{shown}");
        let (local, dom) = n.split_once('@').expect("one @");
        assert!(!local.is_empty() && !dom.contains('@'), "{shown}");
        assert!(
            !n.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{shown}"
        );
        assert!(
            dom.split('.').all(|l| (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            "domain labels: {shown}"
        );
    }
}

/// Whether parsing this config could read a file outside the working directory: a `*_file`
/// value (the parser reads secret files) holding a path. Such inputs are skipped, so that no
/// input can make the fuzzer read `/dev/zero` or a FIFO and hang.
pub fn reads_outside(text: &str, env: &[(String, String)]) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::Table(t) => t.iter().any(|(k, v)| {
                (k.ends_with("_file") && v.as_str().is_some_and(|s| s.contains('/') || s == ".."))
                    || walk(v)
            }),
            toml::Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    let in_text = text
        .parse::<toml::Table>()
        .is_ok_and(|t| walk(&toml::Value::Table(t)));
    in_text
        || env.iter().any(|(k, v)| {
            k.to_ascii_lowercase().ends_with("_file") && (v.contains('/') || v == "..")
        })
}

/// `config`. Input: the config text, then environment variables `NAME=value` each after a NUL
/// byte. Inputs whose `*_file` keys name a path are skipped ([`reads_outside`]).
///
/// Property: never panics (nor do `warnings` and `to_toml` on what it accepts); when the text
/// and environment parse, `parse(&config.to_toml(), &[])` is `Ok` of the same config (the
/// printed config is the effective one and loads back unchanged).
pub fn config(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let text = text(parts.next().unwrap_or_default());
    let env: Vec<(String, String)> = parts
        .map(|p| {
            let p = String::from_utf8_lossy(p);
            match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (p.into_owned(), String::new()),
            }
        })
        .collect();
    if reads_outside(&text, &env) {
        return;
    }
    let Ok(parsed) = config::parse(&text, &env) else {
        return;
    };
    let _ = parsed.warnings();
    let printed = parsed.to_toml();
    let again = config::parse(&printed, &[]);
    if again.as_ref() == Ok(&parsed) {
        return;
    }
    let why = match &again {
        Err(e) => format!("the printed config does not load: {e}"),
        Ok(c) => {
            let mut d = Vec::new();
            let mut diff = |name: &str, a: String, b: String| {
                if a != b {
                    d.push(format!("{name}: {a} became {b}"));
                }
            };
            diff(
                "server",
                format!("{:?}", parsed.server),
                format!("{:?}", c.server),
            );
            diff(
                "crowdsec",
                format!("{:?}", parsed.crowdsec),
                format!("{:?}", c.crowdsec),
            );
            diff(
                "rate_limit",
                format!("{:?}", parsed.rate_limit),
                format!("{:?}", c.rate_limit),
            );
            diff(
                "auth",
                format!("{:?}", parsed.auth),
                format!("{:?}", c.auth),
            );
            diff(
                "session",
                format!("{:?}", parsed.session),
                format!("{:?}", c.session),
            );
            diff(
                "rules",
                format!("{:?}", parsed.rules),
                format!("{:?}", c.rules),
            );
            diff("log", format!("{:?}", parsed.log), format!("{:?}", c.log));
            d.join("; ")
        }
    };
    panic!("config round trip of {text:?} env {env:?}: {why}");
}

/// The path under which the `decision` check's rules deny everything.
pub const DENIED_PATH: &str = "/admin";
/// The host on which the `decision` check's rules deny everything.
pub const DENIED_HOST: &str = "admin.example.com";

fn under_denied_path(path: &str) -> bool {
    path == DENIED_PATH
        || path
            .strip_prefix(DENIED_PATH)
            .is_some_and(|r| r.starts_with('/'))
}

fn percent_decode(raw: &[u8]) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).and_then(|&c| hex(c)),
            raw.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How upstreams may read a request target's path: decoded once, then cleaned as Go's
/// `path.Clean` does (slashes merged, `..` stopping at the root), or dot segments removed as
/// RFC 3986 says (empty segments kept), with and without merging slashes afterwards.
fn upstream_readings(uri: &[u8]) -> Vec<String> {
    let end = uri
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(uri.len());
    let decoded = percent_decode(&uri[..end]);
    let mut clean: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                clean.pop();
            }
            s => clean.push(s),
        }
    }
    let mut rfc: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                rfc.pop();
            }
            s => rfc.push(s),
        }
    }
    let rfc = format!("/{}", rfc.join("/"));
    let merged: Vec<&str> = rfc.split('/').filter(|s| !s.is_empty()).collect();
    vec![
        format!("/{}", clean.join("/")),
        format!("/{}", merged.join("/")),
        rfc,
    ]
}

/// How a proxy may read a Host value: the name before the last `:`, trailing dots dropped,
/// lower-cased (Go's `SplitHostPort` does not check the port).
fn host_reading(raw: &str) -> String {
    let name = match raw.rsplit_once(':') {
        Some((h, _)) if !raw.starts_with('[') => h,
        _ => raw,
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `decision`. Input: line 1 the TCP peer; lines 2, 3 and 4 `X-Forwarded-Method`, `-Host` and
/// `-Uri` (a missing line, the single byte `0xff` or, for method and host, invalid UTF-8: the
/// header is missing or repeated); every further line one `X-Forwarded-For` header line. The
/// request goes through `client_ip` and `decide` as the `/auth` endpoint does, with trusted
/// proxies `10/8`, `127/8`, `fd00::/8`, rate limiting off, CrowdSec clear, no login, and rules
/// denying the path prefix [`DENIED_PATH`] and the host [`DENIED_HOST`].
///
/// Property: never panics; `Allow` implies the forwarded-for walk succeeded, every header was
/// present, `normalize_path` accepted the target and its path is not under `/admin`, and
/// `normalize_host` accepted the host and it is not `admin.example.com`; and no other likely
/// upstream reading of the path (decoded and cleaned as Go or RFC 3986 do) nor of the host
/// (name before the last `:`, trailing dots dropped, lower-cased) reaches the denied ones.
pub fn decision(data: &[u8]) {
    let mut fields = lines(data);
    let peer = peer(fields.next().unwrap_or_default());
    fn header(f: Option<&[u8]>) -> Option<&[u8]> {
        f.filter(|f| *f != [0xff])
    }
    let method_raw = header(fields.next());
    let host_raw = header(fields.next());
    let uri = header(fields.next());
    let xff: Vec<&[u8]> = fields.collect();
    let method = method_raw.and_then(|m| std::str::from_utf8(m).ok());
    let host = host_raw.and_then(|h| std::str::from_utf8(h).ok());
    let forwarded = Forwarded { method, host, uri };

    let trusted = TrustedProxies::new(&default_trusted());
    let rules = Rules::new(
        vec![
            Rule {
                host: None,
                path_prefix: Some(PathPrefix::parse(DENIED_PATH).expect("valid prefix")),
                methods: vec![],
                policy: Policy::Deny,
            },
            Rule {
                host: Some(HostPattern::parse(DENIED_HOST).expect("valid host")),
                path_prefix: None,
                methods: vec![],
                policy: Policy::Deny,
            },
        ],
        false,
    );
    let limiter = Limiter::new(&RateLimit {
        per_second: 0,
        burst: 1,
        key: RateKeyKind::Ip,
        ipv6_prefix: 64,
        exempt: vec![],
    });
    let client = walk(peer, xff.iter().copied(), &trusted);
    let step = match client {
        Err(_) => Step::Done(Verdict::BadRequest(BadRequest::ForwardedFor)),
        Ok(ip) => {
            let rate = rate_key(ip, &limiter, None).map_or(Outcome::Allowed, |k| limiter.check(k));
            decide(CrowdsecState::Clear, rate, &rules, &forwarded)
        }
    };
    let Step::Done(Verdict::Allow { .. }) = step else {
        return;
    };
    let shown = format!(
        "peer {peer} method {method:?} host {host:?} uri {:?} xff {:?} → {step:?}",
        uri.map(text),
        lossy_all(&xff)
    );
    assert!(client.is_ok() && method.is_some(), "{shown}");
    let (Some(host), Some(uri)) = (host, uri) else {
        panic!("allowed without host or uri: {shown}");
    };
    let path =
        normalize_path(uri).unwrap_or_else(|e| panic!("allowed a refused path ({e}): {shown}"));
    assert!(!under_denied_path(&path), "allowed {path:?}: {shown}");
    let normal = normalize_host(host).unwrap_or_else(|| panic!("allowed a refused host: {shown}"));
    assert_ne!(normal, DENIED_HOST, "{shown}");
    for reading in upstream_readings(uri) {
        assert!(
            !under_denied_path(&reading),
            "an upstream may read {reading:?}: {shown}"
        );
    }
    assert_ne!(
        host_reading(host),
        DENIED_HOST,
        "a proxy may read the denied host: {shown}"
    );
}
