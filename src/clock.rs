//! The wall clock as a seam: [`Clock`] is read by the edge once per request, and the instant it
//! returns ([`Now`]) is passed down to the decision, the session lookup and the stores.
//!
//! Invariant: nothing outside this file calls `SystemTime::now()` to decide anything; a test
//! swaps in a [`FakeClock`] and moves time forward without sleeping. Timers that only wait
//! (tokio's `sleep` and `interval`) are not clocks in this sense and stay with tokio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One reading of the wall clock: milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Now {
    unix_ms: u64,
}

impl Now {
    /// The instant `unix_ms` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(unix_ms: u64) -> Self {
        Self { unix_ms }
    }

    /// The instant `unix_secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(unix_secs: u64) -> Self {
        Self {
            unix_ms: unix_secs.saturating_mul(1000),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.unix_ms
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn unix_secs(self) -> u64 {
        self.unix_ms / 1000
    }

    /// Whole seconds since the Unix epoch as the decision table stores them (`u32`, enough
    /// until 2106); later instants saturate at `u32::MAX`.
    pub fn unix_secs_u32(self) -> u32 {
        u32::try_from(self.unix_secs()).unwrap_or(u32::MAX)
    }

    /// The instant `d` later, saturating at the largest representable instant.
    pub fn after(self, d: Duration) -> Self {
        Self {
            unix_ms: self.unix_ms.saturating_add(millis(d)),
        }
    }

    /// Milliseconds from `earlier` to `self`; 0 when `earlier` is later (a clock stepped back).
    pub const fn millis_since(self, earlier: Now) -> u64 {
        self.unix_ms.saturating_sub(earlier.unix_ms)
    }
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A source of the current wall-clock time. Shared as `Arc<dyn Clock>` by everything the app
/// builds; implementations must be cheap to read, since the edge reads one per request.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Now;
}

/// The operating system's wall clock. A clock set before 1970 reads as the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Now::from_unix_millis(millis(since))
    }
}

/// A clock that stands still until told to move: for tests of TTLs, expiry and staleness.
/// Shared by reference, so a test keeps an `Arc<FakeClock>` and hands a clone to the app.
#[derive(Debug, Default)]
pub struct FakeClock {
    unix_ms: AtomicU64,
}

impl FakeClock {
    /// A clock that reads `start` until it is advanced.
    pub fn new(start: Now) -> Self {
        Self {
            unix_ms: AtomicU64::new(start.unix_millis()),
        }
    }

    /// Moves the clock `d` forward.
    pub fn advance(&self, d: Duration) {
        self.unix_ms.fetch_add(millis(d), Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Now {
        Now::from_unix_millis(self.unix_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_saturation() {
        let t = Now::from_unix_millis(1_700_000_000_999);
        assert_eq!(t.unix_secs(), 1_700_000_000);
        assert_eq!(t.unix_secs_u32(), 1_700_000_000);
        assert_eq!(t.after(Duration::from_millis(1)).unix_secs(), 1_700_000_001);
        assert_eq!(Now::from_unix_secs(5).unix_millis(), 5000);
        assert_eq!(Now::from_unix_secs(u64::MAX).unix_secs_u32(), u32::MAX);
        assert_eq!(t.after(Duration::MAX).unix_millis(), u64::MAX);
        let later = t.after(Duration::from_secs(2));
        assert_eq!(later.millis_since(t), 2000);
        assert_eq!(
            t.millis_since(later),
            0,
            "a clock stepped back reads as no time"
        );
    }

    #[test]
    fn a_fake_clock_moves_only_when_told() {
        let clock = FakeClock::new(Now::from_unix_secs(100));
        assert_eq!(clock.now(), Now::from_unix_secs(100));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now().unix_millis(), 101_500);
        // The system clock is past 2020 on any machine that runs these tests.
        assert!(SystemClock.now().unix_secs() > 1_577_836_800);
    }
}
