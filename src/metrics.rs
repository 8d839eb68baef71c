//! The Prometheus metrics of README's "Metrics and logs" table, registered once and handed out as cheap handles.
//!
//! Invariant: the request path never looks a label set up in a map; every `(endpoint,
//! verdict)` counter and every endpoint histogram is resolved at start-up into a fixed array,
//! so recording a request is an atomic add and one histogram observation.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crowdsec::table::Counts;
use crate::decision::VerdictLabel;

/// The endpoints that record a verdict or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Auth,
    AuthRequest,
}

impl Endpoint {
    const ALL: [Endpoint; 2] = [Endpoint::Auth, Endpoint::AuthRequest];

    /// The `endpoint` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Auth => "auth",
            Endpoint::AuthRequest => "auth_request",
        }
    }
}

/// Login outcomes (`jacker_gate_logins_total{result}`), registered now so dashboards see zeros.
pub const LOGIN_RESULTS: [&str; 5] = [
    "success",
    "denied_email",
    "unverified",
    "invalid_state",
    "provider_error",
];

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    requests: [[Counter; 6]; 2],
    durations: [Histogram; 2],
    decisions: Family<Labels, Gauge>,
    pub crowdsec_last_sync: Gauge<f64, AtomicU64>,
    pub crowdsec_sync_errors: Counter,
    pub crowdsec_skipped: Counter,
    pub logins: Family<Labels, Counter>,
    pub session_store_errors: Family<Labels, Counter>,
    pub ratelimit_keys: Gauge,
    pub untrusted_forwarded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();

        let requests_family = Family::<Labels, Counter>::default();
        registry.register(
            "jacker_gate_requests",
            "Requests answered, by endpoint and verdict",
            requests_family.clone(),
        );
        let requests = Endpoint::ALL.map(|e| {
            VerdictLabel::ALL.map(|v| {
                requests_family
                    .get_or_create(&vec![("endpoint", e.as_str()), ("verdict", v.as_str())])
                    .clone()
            })
        });

        // Buckets from 5 µs to ~160 ms: the gate answers in microseconds, a live-mode LAPI
        // lookup or a session store round trip in milliseconds.
        let duration_family = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_005, 2.0, 16,
            ))
        });
        registry.register(
            "jacker_gate_request_duration_seconds",
            "Time to answer a decision request",
            duration_family.clone(),
        );
        let durations = Endpoint::ALL.map(|e| {
            duration_family
                .get_or_create(&vec![("endpoint", e.as_str())])
                .clone()
        });

        let decisions = Family::<Labels, Gauge>::default();
        registry.register(
            "jacker_gate_crowdsec_decisions",
            "CrowdSec decisions held in memory, by type and scope",
            decisions.clone(),
        );
        let crowdsec_last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "jacker_gate_crowdsec_last_sync_timestamp_seconds",
            "Unix time of the last successful CrowdSec LAPI sync",
            crowdsec_last_sync.clone(),
        );
        let crowdsec_sync_errors = Counter::default();
        registry.register(
            "jacker_gate_crowdsec_sync_errors",
            "Failed CrowdSec LAPI requests",
            crowdsec_sync_errors.clone(),
        );
        let crowdsec_skipped = Counter::default();
        registry.register(
            "jacker_gate_crowdsec_skipped_decisions",
            "LAPI decisions not enforced: a scope other than Ip/Range, or malformed",
            crowdsec_skipped.clone(),
        );
        let logins = Family::<Labels, Counter>::default();
        registry.register(
            "jacker_gate_logins",
            "Login attempts by result",
            logins.clone(),
        );
        for r in LOGIN_RESULTS {
            let _ = logins.get_or_create(&vec![("result", r)]);
        }
        let session_store_errors = Family::<Labels, Counter>::default();
        registry.register(
            "jacker_gate_session_store_errors",
            "Failed session store operations, by operation",
            session_store_errors.clone(),
        );
        let ratelimit_keys = Gauge::default();
        registry.register(
            "jacker_gate_ratelimit_keys",
            "Rate-limit buckets held in memory",
            ratelimit_keys.clone(),
        );

        let untrusted_forwarded = Counter::default();
        registry.register(
            "jacker_gate_untrusted_forwarded",
            "Decision requests carrying X-Forwarded-* from a peer outside server.trusted_proxies (usually a misconfiguration)",
            untrusted_forwarded.clone(),
        );
        let m = Self {
            registry,
            requests,
            durations,
            decisions,
            crowdsec_last_sync,
            crowdsec_sync_errors,
            crowdsec_skipped,
            logins,
            session_store_errors,
            ratelimit_keys,
            untrusted_forwarded,
        };
        m.set_decisions(&Counts::default());
        m
    }

    #[inline]
    pub fn record(&self, endpoint: Endpoint, verdict: VerdictLabel, seconds: f64) {
        let e = endpoint as usize;
        self.requests[e][verdict.index()].inc();
        self.durations[e].observe(seconds);
    }

    pub fn set_decisions(&self, counts: &Counts) {
        for (kind, scope, n) in counts.rows() {
            self.decisions
                .get_or_create(&vec![("type", kind), ("scope", scope)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_are_exported() {
        let m = Metrics::new();
        m.record(Endpoint::Auth, VerdictLabel::Banned, 0.0001);
        m.crowdsec_sync_errors.inc();
        let text = m.encode();
        for name in [
            "jacker_gate_requests_total{endpoint=\"auth\",verdict=\"banned\"} 1",
            "jacker_gate_request_duration_seconds_bucket{",
            "jacker_gate_crowdsec_decisions{type=\"ban\",scope=\"ip\"} 0",
            "jacker_gate_crowdsec_last_sync_timestamp_seconds ",
            "jacker_gate_crowdsec_sync_errors_total 1",
            "jacker_gate_logins_total{result=\"invalid_state\"} 0",
            "# TYPE jacker_gate_session_store_errors counter",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
