//! What one replica knows about one key's shared bucket, and what it may do without asking
//! Redis: pure, on instants it is given, so the unit tests below fix every boundary.
//!
//! A replica admits a request of a key in one of three ways:
//! - from its **reserve**: tokens Redis granted it ahead, spent within [`RESERVE_TTL`];
//! - on **loan**: admitted at once, without Redis, when the replica believes the bucket holds at
//!   least [`Params::loan_floor`] tokens (a key it has not seen is believed full). Every loan is
//!   charged to the bucket in Redis: with the next batch once the key has used up its slack of
//!   them, else at most [`LOAN_TTL`] after the first, together with every other key's loans that
//!   came due; except that a replica forgives a key the loans that came due, and then
//!   forgives it nothing for 100 emissions per loan forgiven (so a client far below its limit
//!   costs no Redis call);
//! - by **asking**: the request waits for the next batch to bring it a token.
//!
//! The accuracy bound: every admitted request spends a token the one GCRA state in Redis
//! granted or is charged to it later; at any instant a replica holds at most `slack` tokens of a
//! key that are granted and unspent (reserve) or spent and not yet charged (loans), and it lends
//! only while it believes half the burst is left, so a key that is being limited gets no loans
//! at all. Over any window t, N replicas then admit at most `burst + per_second × t` plus, per
//! replica, a reserve held at its start and loans in flight at its end (together at most 2
//! slacks), loans charged into an empty bucket (one slack, once per refill to half) and what
//! was forgiven (at most `slack + per_second × t / 100`): with the slack at `burst / 100`, about
//! 4% of the burst and 1% of `per_second × t` per replica.

use std::time::{Duration, Instant};

/// How long tokens taken from Redis may wait locally to be spent; unspent ones are dropped
/// (a stricter limit, never a looser one).
pub(super) const RESERVE_TTL: Duration = Duration::from_millis(250);
/// How long a loan may wait to be charged: the batcher sends, with its next batch, the loans of
/// every key whose first uncharged loan is this old.
pub(super) const LOAN_TTL: Duration = Duration::from_secs(1);

/// The limit's shape in the units the state works in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    /// Time between two tokens (1 / `per_second`).
    pub(super) emission: Duration,
    /// The burst's worth of emissions: how far ahead of now the bucket's theoretical arrival
    /// time may run.
    pub(super) tolerance: Duration,
    /// Tokens a replica may hold unconfirmed per key (reserve plus loans): `burst / 100`, at
    /// most 16. 0 (a burst under 100): every request asks Redis.
    pub(super) slack: u32,
    /// Loans are made only while the bucket is believed to hold at least this many emissions'
    /// worth of tokens (half the burst).
    pub(super) loan_floor: Duration,
    /// How long a replica forgives a key nothing after forgiving it one loan: 100 emissions
    /// (so at most 1% of `per_second` per replica); `None` when there are no loans.
    pub(super) forgive_every: Option<Duration>,
}

impl Params {
    /// `per_second` ≥ 1, `burst` ≥ 1.
    pub(super) fn new(per_second: u32, burst: u32) -> Self {
        // Redis counts in whole µs: rounded up, the shared limit is at most that much stricter,
        // never looser (1% above 10,000/s; `Config::warnings` says so beyond).
        let emission =
            Duration::from_micros(1_000_000_u64.div_ceil(u64::from(per_second.max(1))).max(1));
        let burst = burst.max(1);
        let slack = (burst / 100).min(16);
        Params {
            emission,
            tolerance: emission * burst,
            slack,
            loan_floor: emission * burst.div_ceil(2),
            forgive_every: (slack > 0).then_some(emission * 100),
        }
    }
}

/// What a request may do right now.
#[derive(Debug, PartialEq)]
pub(super) enum Take {
    /// Admitted from the reserve.
    Reserve,
    /// Admitted on loan; `first`: the key had no uncharged loan, so its loans are due to be
    /// charged [`LOAN_TTL`] from now.
    Loan { first: bool },
    /// Admitted on the last loan of the slack: the key must be queued so its loans are charged.
    LoanAndReport,
    /// Redis said the bucket is empty until then.
    Limited(Duration),
    /// Ask Redis (wait for the next batch).
    Ask,
}

/// One key's state on this replica.
#[derive(Debug)]
pub(super) struct KeyState {
    /// Granted tokens not yet spent, valid until `until`.
    pub(super) left: u32,
    pub(super) until: Instant,
    /// Redis said no token before this instant.
    pub(super) empty_until: Option<Instant>,
    /// The bucket's theoretical arrival time as this replica believes it: Redis's at the last
    /// answer, pushed on by each loan since. The bucket holds `(now + tolerance − tat) /
    /// emission` tokens.
    pub(super) tat: Instant,
    /// Loans not yet sent to Redis (the first made at `owed_since`), and loans in a batch in
    /// flight.
    pub(super) owed: u32,
    pub(super) owed_since: Instant,
    /// Until when this replica forgives the key nothing.
    pub(super) forgiven_until: Option<Instant>,
    pub(super) sending: u32,
    /// Whether the key is in the queue of the next batch.
    pub(super) queued: bool,
}

/// What one batch brought back for one key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    /// When the answer arrived.
    pub(super) at: Instant,
    /// Loans this batch charged.
    pub(super) charged: u32,
    /// Tokens granted.
    pub(super) granted: u32,
    /// How far the bucket's theoretical arrival time runs ahead of Redis's clock after the
    /// call (0: the bucket is full).
    pub(super) ahead: Duration,
}

impl KeyState {
    /// A key this replica knows nothing of: believed full.
    pub(super) fn new(now: Instant) -> Self {
        KeyState {
            left: 0,
            until: now,
            empty_until: None,
            tat: now,
            owed: 0,
            owed_since: now,
            forgiven_until: None,
            sending: 0,
            queued: false,
        }
    }

    fn unconfirmed(&self) -> u32 {
        self.owed + self.sending
    }

    /// One request of this key at `now`.
    pub(super) fn take(&mut self, now: Instant, p: &Params) -> Take {
        if self.held(now) > 0 {
            self.left -= 1;
            return Take::Reserve;
        }
        match self.empty_until {
            Some(at) if at > now => return Take::Limited(at - now),
            _ => self.empty_until = None,
        }
        if self.unconfirmed() + self.held(now) < p.slack && self.above_loan_floor(now, p) {
            let first = self.owed == 0;
            if first {
                self.owed_since = now;
            }
            self.owed += 1;
            self.tat = self.tat.max(now) + p.emission;
            // With a slack of 1 the next request asks anyway, and carries the charge.
            if p.slack > 1 && self.unconfirmed() == p.slack && !self.queued {
                return Take::LoanAndReport;
            }
            return Take::Loan { first };
        }
        Take::Ask
    }

    /// Takes up to `n` tokens from the reserve at `now`; returns how many.
    pub(super) fn take_reserve(&mut self, now: Instant, n: usize) -> usize {
        let n = n.min(self.held(now) as usize);
        self.left -= n as u32;
        n
    }

    /// Drops the key's due loans uncharged, then forgives it nothing for
    /// [`Params::forgive_every`] per loan forgiven (at least until loans can next come due);
    /// false while that time runs.
    pub(super) fn forgive_loans(&mut self, now: Instant, p: &Params) -> bool {
        let Some(every) = p.forgive_every else {
            return false;
        };
        if self.owed == 0 || self.sending > 0 || self.forgiving_nothing(now) {
            return false;
        }
        self.forgiven_until = Some(now + (every * self.owed).max(LOAN_TTL));
        self.owed = 0;
        true
    }

    fn forgiving_nothing(&self, now: Instant) -> bool {
        self.forgiven_until.is_some_and(|until| until > now)
    }

    /// Whether the key's loans have waited [`LOAN_TTL`] and are not queued yet.
    pub(super) fn loans_due(&self, now: Instant) -> bool {
        self.owed > 0 && !self.queued && self.owed_since + LOAN_TTL <= now
    }

    /// Whether the bucket is believed to hold at least [`Params::loan_floor`] at `now`.
    fn above_loan_floor(&self, now: Instant, p: &Params) -> bool {
        self.tat + p.loan_floor <= now + p.tolerance
    }

    fn held(&self, now: Instant) -> u32 {
        if self.until > now {
            self.left
        } else {
            0
        }
    }

    /// What the next batch sends for this key: the loans to charge (moved to `sending`) and the
    /// tokens to ask for, given `waiting` requests.
    pub(super) fn take_batch_line(&mut self, waiting: u32, p: &Params) -> (u32, u32) {
        self.queued = false;
        let charge = self.owed;
        self.owed = 0;
        self.sending += charge;
        // A key busy enough to wait or to use up its loans gets a reserve for what follows.
        let busy = waiting > 0 || charge >= p.slack.max(1);
        let want = waiting + if busy { p.slack } else { 0 };
        (charge, want)
    }

    /// Applies Redis's answer; returns how many of the `waiting` requests are admitted, and for
    /// the rest, how long until the next token.
    pub(super) fn apply(&mut self, r: Reply, waiting: u32, p: &Params) -> (u32, Duration) {
        self.sending = self.sending.saturating_sub(r.charged);
        self.tat = r.at + r.ahead;
        let served = r.granted.min(waiting);
        let mut extra = r.granted - served;
        // Tokens beyond the waiters first pay for loans made while the batch was out: those
        // need no charge later.
        let settled = extra.min(self.owed);
        self.owed -= settled;
        extra -= settled;
        // What the replica holds never exceeds the slack (the excess is dropped: stricter only).
        let room = p.slack.saturating_sub(self.unconfirmed());
        self.left = (self.held(r.at) + extra).min(room);
        if extra > 0 {
            self.until = r.at + RESERVE_TTL;
        }
        // No whole token left: nobody gets one before it refills.
        let next = (r.ahead + p.emission).saturating_sub(p.tolerance);
        if !next.is_zero() && self.left == 0 {
            self.empty_until = Some(r.at + next);
        }
        (served, next.max(p.emission))
    }

    /// A failed batch: its loans are lost (admitted, never charged: Redis was not there).
    pub(super) fn failed(&mut self, charged: u32) {
        self.sending = self.sending.saturating_sub(charged);
    }

    /// Whether forgetting the key changes nothing: no loan or reserve outstanding, not limited,
    /// and believed to hold at least the loan floor, as an unknown key is.
    pub(super) fn forgettable(&self, now: Instant, p: &Params) -> bool {
        self.unconfirmed() == 0
            && !self.queued
            && self.held(now) == 0
            && self.empty_until.is_none_or(|at| at <= now)
            && self.above_loan_floor(now, p)
            // Forgotten, a key could be forgiven again at once.
            && !self.forgiving_nothing(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 50/s, burst 100, with a slack of 2 (`Params::new` gives it 1; 2 shows more): a token
    /// every 20 ms, 2 s of tolerance, loans above 50 tokens, 2 s without forgiveness per loan.
    fn p() -> Params {
        Params {
            slack: 2,
            ..Params::new(50, 100)
        }
    }

    #[test]
    fn the_shape_in_time() {
        let p = Params::new(50, 100);
        assert_eq!(p.emission, ms(20));
        assert_eq!(p.tolerance, ms(2000));
        assert_eq!(p.slack, 1);
        assert_eq!(p.loan_floor, ms(1000));
        assert_eq!(p.forgive_every, Some(ms(2000)));
        assert_eq!(Params::new(1, 3).slack, 0);
        assert_eq!(Params::new(50, 99).slack, 0);
        assert_eq!(Params::new(1000, 100_000).slack, 16);
        // Rounded up to whole µs: stricter, never looser.
        assert_eq!(
            Params::new(150_000, 300_000).emission,
            Duration::from_micros(7)
        );
        assert_eq!(Params::new(3, 3).emission, Duration::from_micros(333_334));
        // Each replica adds at most 3 slacks over a short window (a reserve at its start, loans
        // in flight at its end, one forgiveness): 3 replicas stay within 10% of the burst.
        for burst in [1, 10, 49, 50, 100, 999, 5000] {
            assert!(
                3 * 3 * Params::new(50, burst).slack <= burst / 10,
                "burst {burst}"
            );
        }
    }

    #[test]
    fn an_unknown_key_gets_slack_loans_then_asks() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        assert_eq!(k.take(t, &p), Take::Loan { first: true });
        assert_eq!(
            k.take(t, &p),
            Take::LoanAndReport,
            "the slack used: charge it"
        );
        k.queued = true;
        assert_eq!(k.take(t, &p), Take::Ask, "slack 2: the third waits");
        assert_eq!(
            k.take_batch_line(1, &p),
            (2, 3),
            "two loans charged, one token + a reserve asked"
        );
        assert_eq!(k.take(t, &p), Take::Ask, "loans in flight still count");
    }

    #[test]
    fn a_small_burst_never_lends() {
        let p = Params::new(1, 3);
        let t = Instant::now();
        assert_eq!(KeyState::new(t).take(t, &p), Take::Ask);
    }

    #[test]
    fn a_granted_reserve_serves_the_next_requests_until_it_expires() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        // Redis granted 3 to one waiter: one served, two held.
        k.take_batch_line(1, &p);
        let (served, _) = k.apply(
            Reply {
                at: t,
                charged: 0,
                granted: 3,
                ahead: ms(1900),
            },
            1,
            &p,
        );
        assert_eq!((served, k.left), (1, 2));
        assert_eq!(k.take(t + ms(10), &p), Take::Reserve);
        assert_eq!(
            k.take(t + RESERVE_TTL, &p),
            Take::Ask,
            "expired; 40 ms of tokens is below the loan floor"
        );
    }

    #[test]
    fn an_empty_bucket_limits_without_asking_until_the_next_token() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take_batch_line(2, &p);
        // Full up to the tolerance: the next token in one emission.
        let (served, retry) = k.apply(
            Reply {
                at: t,
                charged: 0,
                granted: 0,
                ahead: ms(2000),
            },
            2,
            &p,
        );
        assert_eq!((served, retry), (0, ms(20)));
        assert_eq!(k.take(t + ms(19), &p), Take::Limited(ms(1)));
        assert_eq!(
            k.take(t + ms(20), &p),
            Take::Ask,
            "a limited key never gets a loan"
        );
    }

    #[test]
    fn loans_stop_below_half_the_burst_and_resume_once_it_refilled() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take(t, &p);
        k.take_batch_line(0, &p);
        // Redis: 60 tokens used (1.2 s ahead), 40 left.
        k.apply(
            Reply {
                at: t,
                charged: 1,
                granted: 0,
                ahead: ms(1200),
            },
            0,
            &p,
        );
        assert_eq!(k.take(t, &p), Take::Ask);
        assert!(!k.forgettable(t, &p));
        // 200 ms later 50 are left: loans again, each pushing the belief on.
        let later = t + ms(200);
        assert!(k.forgettable(later, &p));
        assert_eq!(k.take(later, &p), Take::Loan { first: true });
        assert_eq!(k.take(later, &p), Take::Ask, "now believed below 50");
    }

    #[test]
    fn loans_charged_past_the_burst_limit_until_the_debt_is_paid() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take(t, &p);
        k.take(t, &p);
        assert_eq!(k.take_batch_line(0, &p), (2, 2));
        // Other replicas had emptied the bucket: the loans put it 40 ms in debt.
        let (_, retry) = k.apply(
            Reply {
                at: t,
                charged: 2,
                granted: 0,
                ahead: ms(2040),
            },
            0,
            &p,
        );
        assert_eq!(retry, ms(60));
        assert_eq!(k.empty_until, Some(t + ms(60)));
        assert_eq!(k.take(t + ms(59), &p), Take::Limited(ms(1)));
    }

    #[test]
    fn what_a_replica_holds_never_exceeds_the_slack() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take(t, &p);
        k.take_batch_line(0, &p);
        k.take(t, &p); // one loan in flight, one owed
        k.apply(
            Reply {
                at: t,
                charged: 1,
                granted: 5,
                ahead: ms(0),
            },
            0,
            &p,
        );
        assert_eq!(k.left + k.owed + k.sending, p.slack);
    }

    #[test]
    fn granted_tokens_pay_for_loans_made_while_the_batch_was_out() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take(t, &p);
        assert_eq!(k.take(t, &p), Take::LoanAndReport);
        assert_eq!(k.take_batch_line(0, &p), (2, 2));
        assert_eq!(k.take(t, &p), Take::Ask, "the slack is in flight");
        k.apply(
            Reply {
                at: t,
                charged: 2,
                granted: 2,
                ahead: ms(80),
            },
            0,
            &p,
        );
        assert_eq!(k.left, 2);
        // The waiter's batch goes out; meanwhile the reserve is spent and one more loan made.
        assert_eq!(k.take_batch_line(1, &p), (0, 3));
        assert_eq!(k.take(t, &p), Take::Reserve);
        assert_eq!(k.take(t, &p), Take::Reserve);
        assert_eq!(k.take(t, &p), Take::Loan { first: true });
        let (served, _) = k.apply(
            Reply {
                at: t,
                charged: 0,
                granted: 3,
                ahead: ms(140),
            },
            1,
            &p,
        );
        assert_eq!(served, 1);
        assert_eq!(
            (k.owed, k.left),
            (0, 1),
            "one token paid the loan, one is held"
        );
    }

    #[test]
    fn every_loan_comes_due_a_loan_ttl_after_the_first() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        // One request every 600 ms here: the loans pile up, never forgotten.
        assert_eq!(k.take(t, &p), Take::Loan { first: true });
        assert!(!k.loans_due(t + LOAN_TTL - ms(1)));
        assert_eq!(
            k.take(t + ms(600), &p),
            Take::LoanAndReport,
            "the slack is used"
        );
        k.queued = true;
        assert!(!k.loans_due(t + LOAN_TTL), "already queued");
        k.queued = false;
        assert!(k.loans_due(t + LOAN_TTL));
        assert!(
            !k.forgettable(t + Duration::from_secs(60), &p),
            "uncharged loans are kept"
        );
        assert_eq!(k.take_batch_line(0, &p), (2, 2));
        k.apply(
            Reply {
                at: t + LOAN_TTL,
                charged: 2,
                granted: 0,
                ahead: ms(40),
            },
            0,
            &p,
        );
        assert!(k.forgettable(t + LOAN_TTL, &p));
    }

    #[test]
    fn each_forgiven_loan_buys_a_hundred_emissions_of_forgiving_nothing() {
        let (p, t) = (p(), Instant::now());
        assert_eq!(p.forgive_every, Some(ms(2000)), "100 emissions at 50/s");
        assert_eq!(
            Params::new(1, 3).forgive_every,
            None,
            "no loans, nothing to forgive"
        );
        let mut k = KeyState::new(t);
        k.take(t, &p);
        assert!(k.forgive_loans(t + LOAN_TTL, &p));
        assert!(!k.forgettable(t + LOAN_TTL, &p), "kept to remember it");
        k.take(t + LOAN_TTL, &p);
        assert!(!k.forgive_loans(t + ms(2999), &p), "within 2 s: charged");
        assert!(k.forgive_loans(t + ms(3000), &p));
        k.take(t + ms(5000), &p);
        k.take(t + ms(5000), &p);
        k.queued = false;
        assert!(k.forgive_loans(t + ms(6000), &p), "two loans");
        assert_eq!(
            k.forgiven_until,
            Some(t + ms(10_000)),
            "four seconds for two"
        );
        assert!(!k.forgettable(t + ms(9999), &p));
        assert!(k.forgettable(t + ms(10_000), &p));
        // Over any span, what is forgiven stays within slack + per_second × t / 100.
        let mut k = KeyState::new(t);
        let mut forgiven = 0;
        for i in 0..200u64 {
            let at = t + ms(50 * i);
            if k.take(at, &p) == Take::LoanAndReport {
                k.queued = false;
            }
            let owed = k.owed;
            if k.loans_due(at) && k.forgive_loans(at, &p) {
                forgiven += owed;
            }
        }
        // With t = 10 s: 2 + 5.
        assert!(
            (1..=p.slack + 5).contains(&forgiven),
            "{forgiven} forgiven in 10 s"
        );
    }

    #[test]
    fn a_failed_batch_releases_its_loans() {
        let (p, t) = (p(), Instant::now());
        let mut k = KeyState::new(t);
        k.take(t, &p);
        let (charge, _) = k.take_batch_line(0, &p);
        k.failed(charge);
        assert!(k.forgettable(t, &p));
    }
}
