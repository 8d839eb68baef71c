//! Per-client rate limit (step 3 of the decision, README "The decision"): a keyed GCRA limiter from `governor`.
//!
//! Invariants: the key is derived only from the already-decided client IP (or a session's
//! user), so spoofed headers cannot pick a fresh bucket; IPv6 clients share one bucket per
//! `ipv6_prefix` network, since one host holds a whole /64; memory stays bounded because idle
//! buckets (indistinguishable from fresh ones) are dropped by [`Limiter::cleanup`].

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use serde::{Deserialize, Serialize};

/// What a bucket is keyed by (`rate_limit.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKeyKind {
    /// The client IP (IPv6 grouped by `ipv6_prefix`).
    Ip,
    /// The signed-in user; the client IP without a session.
    User,
}

/// The limiter's settings (`[rate_limit]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per second each key earns; 0 turns the limiter off.
    pub per_second: u32,
    /// Requests a key may send at once after being idle (at least 1).
    pub burst: u32,
    /// What a bucket is keyed by.
    pub key: RateKeyKind,
    /// IPv6 clients share one bucket per network of this prefix length (1–128).
    pub ipv6_prefix: u8,
    /// Networks never limited.
    pub exempt: Vec<IpNet>,
}

impl Default for RateLimit {
    /// 50 requests per second, bursts of 100, by IP, IPv6 by /64, nobody exempt.
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 100,
            key: RateKeyKind::Ip,
            ipv6_prefix: 64,
            exempt: Vec::new(),
        }
    }
}

/// One bucket's key: an IPv4 address, a masked IPv6 network, or a user, in one integer.
/// IPv4 uses the IPv4-mapped IPv6 range, which no canonical IPv6 client falls in; users use a
/// keyed 64-bit hash under a tag no address uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateKey(u128);

const USER_TAG: u128 = 0xffff_fffe << 96;

impl RateKey {
    /// The key as one number, the same on every replica (for a shared store's key name).
    pub fn id(self) -> u128 {
        self.0
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Within the budget.
    Allowed,
    /// Over the limit.
    Limited {
        /// Whole seconds until one request's worth has refilled (at least 1), for
        /// `Retry-After`.
        retry_after_secs: u64,
    },
}

type Keyed<C> = RateLimiter<
    RateKey,
    DashMapStateStore<RateKey, foldhash::fast::RandomState>,
    C,
    governor::middleware::NoOpMiddleware<<C as Clock>::Instant>,
>;

/// The keyed limiter: one GCRA bucket per key, on the clock `C` (governor's monotonic clock,
/// or a fake one in tests).
pub struct Limiter<C: Clock = DefaultClock> {
    limiter: Option<Keyed<C>>,
    clock: C,
    ipv6_mask: u128,
    exempt: Vec<IpNet>,
    by_user: bool,
    user_hasher: foldhash::quality::FixedState,
}

/// The seed of user keys. Fixed, not random per process: with `store = "redis"` every replica
/// must name a user's bucket alike. Two users share a bucket only if two addresses the email
/// policy admits collide in 64 bits.
const USER_SEED: u64 = 0x6a61_636b_6572_2d67;

impl Limiter<DefaultClock> {
    /// A limiter on the monotonic clock.
    pub fn new(config: &RateLimit) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock`; `per_second = 0` makes one that allows everything.
    pub fn with_clock(config: &RateLimit, clock: C) -> Self {
        let limiter = NonZeroU32::new(config.per_second).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            RateLimiter::dashmap_with_clock_and_hasher(quota, clock.clone(), Default::default())
        });
        let prefix = u32::from(config.ipv6_prefix.min(128));
        let ipv6_mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        Self {
            limiter,
            clock,
            ipv6_mask,
            exempt: config.exempt.clone(),
            by_user: config.key == RateKeyKind::User,
            user_hasher: foldhash::quality::FixedState::with_seed(USER_SEED),
        }
    }

    /// Whether requests are limited at all.
    pub fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `key = "user"`: signed-in users get a bucket of their own.
    pub fn keyed_by_user(&self) -> bool {
        self.by_user && self.enabled()
    }

    /// The bucket key for a client address; `None` when the address is exempt.
    pub fn ip_key(&self, ip: IpAddr) -> Option<RateKey> {
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        Some(RateKey(match ip {
            IpAddr::V4(a) => 0xffff_u128 << 32 | u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a) & self.ipv6_mask,
        }))
    }

    /// The bucket key for a signed-in user.
    pub fn user_key(&self, user: &str) -> RateKey {
        RateKey(USER_TAG | u128::from(self.user_hasher.hash_one(user)))
    }

    /// Takes one request from `key`'s bucket.
    pub fn check(&self, key: RateKey) -> Outcome {
        let Some(limiter) = &self.limiter else {
            return Outcome::Allowed;
        };
        match limiter.check_key(&key) {
            Ok(()) => Outcome::Allowed,
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Outcome::Limited {
                    retry_after_secs: whole_seconds_at_least_one(wait),
                }
            }
        }
    }

    /// Drops buckets that have refilled completely; call periodically.
    pub fn cleanup(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Buckets currently held.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn whole_seconds_at_least_one(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            key: RateKeyKind::Ip,
            ipv6_prefix: 64,
            exempt: vec!["192.168.0.0/16".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&config(50, 100), clock.clone());
        let k = l.ip_key(ip("1.2.3.4")).unwrap();
        for i in 0..100 {
            assert_eq!(l.check(k), Outcome::Allowed, "request {i}");
        }
        assert_eq!(
            l.check(k),
            Outcome::Limited {
                retry_after_secs: 1
            }
        );
        // Another client has its own bucket.
        assert_eq!(l.check(l.ip_key(ip("1.2.3.5")).unwrap()), Outcome::Allowed);
        // 20 ms later one request's worth (1/50 s) has refilled.
        clock.advance(Duration::from_millis(20));
        assert_eq!(l.check(k), Outcome::Allowed);
        assert!(matches!(l.check(k), Outcome::Limited { .. }));
        // After 2 s the whole burst is back, and cleanup may forget the bucket.
        assert_eq!(l.len(), 2);
        clock.advance(Duration::from_secs(3));
        l.cleanup();
        assert_eq!(l.len(), 0, "both buckets refilled and were dropped");
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&config(1, 1), clock.clone());
        let k = l.ip_key(ip("1.2.3.4")).unwrap();
        assert_eq!(l.check(k), Outcome::Allowed);
        assert_eq!(
            l.check(k),
            Outcome::Limited {
                retry_after_secs: 1
            }
        );
        clock.advance(Duration::from_millis(999));
        assert_eq!(
            l.check(k),
            Outcome::Limited {
                retry_after_secs: 1
            }
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(k), Outcome::Allowed);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds_at_least_one(Duration::ZERO), 1);
    }

    #[test]
    fn keys() {
        let l = Limiter::new(&config(50, 100));
        assert_eq!(l.ip_key(ip("192.168.4.4")), None, "exempt");
        assert_eq!(
            l.ip_key(ip("2001:db8::1")),
            l.ip_key(ip("2001:db8::ffff:1")),
            "one /64 is one bucket"
        );
        assert_ne!(l.ip_key(ip("2001:db8::1")), l.ip_key(ip("2001:db8:0:1::1")));
        assert_ne!(l.ip_key(ip("1.2.3.4")), l.ip_key(ip("1.2.3.5")));
        assert_ne!(
            l.ip_key(ip("1.2.3.4")).unwrap(),
            l.user_key("a@example.com")
        );
        assert_eq!(l.user_key("a@example.com"), l.user_key("a@example.com"));
        let off = Limiter::new(&config(0, 100));
        assert!(!off.enabled());
        let k = off.ip_key(ip("1.2.3.4")).unwrap();
        for _ in 0..1000 {
            assert_eq!(off.check(k), Outcome::Allowed);
        }
    }
}
