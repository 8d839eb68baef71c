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
    /// `/auth`, for Traefik and Caddy.
    Auth,
    /// `/auth-request`, for nginx's `auth_request`.
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

/// The `result` label of `jacker_gate_logins_total`: how a login attempt ended. Each attempt
/// is counted once, at the step that ended it (`/oauth2/start` or the callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// `success`: a session was created.
    Success,
    /// `denied_email`: the email policy refused the account.
    DeniedEmail,
    /// `unverified`: the provider does not vouch for the address.
    Unverified,
    /// `invalid_state`: the callback's state is missing, unknown, used, expired, from another
    /// browser, or the answer names another issuer.
    InvalidState,
    /// `provider_error`: the provider refused, could not be reached, or its answer did not
    /// verify.
    ProviderError,
    /// `store_error`: the session store failed while the login was stored, taken or finished.
    StoreError,
}

impl LoginResult {
    /// Every result, in declaration order; all are registered at start-up, so dashboards see
    /// zeros.
    pub const ALL: [LoginResult; 6] = [
        LoginResult::Success,
        LoginResult::DeniedEmail,
        LoginResult::Unverified,
        LoginResult::InvalidState,
        LoginResult::ProviderError,
        LoginResult::StoreError,
    ];

    /// The label value as exported.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::DeniedEmail => "denied_email",
            LoginResult::Unverified => "unverified",
            LoginResult::InvalidState => "invalid_state",
            LoginResult::ProviderError => "provider_error",
            LoginResult::StoreError => "store_error",
        }
    }
}

/// The `op` label of `jacker_gate_session_store_errors_total`: which store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// `get`: looking a session up.
    Get,
    /// `put`: creating a session.
    Put,
    /// `revoke`: signing out.
    Revoke,
    /// `login_put`: storing a login attempt at `/oauth2/start`.
    LoginPut,
    /// `login_take`: taking a login attempt at the callback.
    LoginTake,
}

impl StoreOp {
    /// The label value as exported.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::Revoke => "revoke",
            StoreOp::LoginPut => "login_put",
            StoreOp::LoginTake => "login_take",
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// Every `jacker_gate_*` metric, registered once. Cloning a handle shares the metric.
pub struct Metrics {
    registry: Registry,
    requests: [[Counter; 6]; 2],
    durations: [Histogram; 2],
    decisions: Family<Labels, Gauge>,
    /// `jacker_gate_crowdsec_last_sync_timestamp_seconds`: Unix seconds (fractional) of the
    /// last successful LAPI answer.
    pub crowdsec_last_sync: Gauge<f64, AtomicU64>,
    /// `jacker_gate_crowdsec_sync_errors_total`: failed LAPI requests.
    pub crowdsec_sync_errors: Counter,
    /// `jacker_gate_crowdsec_skipped_decisions_total`: LAPI decisions the gate cannot enforce.
    pub crowdsec_skipped: Counter,
    logins: [Counter; 6],
    session_store_errors: Family<Labels, Counter>,
    /// `jacker_gate_ratelimit_keys`: rate-limit buckets held in memory.
    pub ratelimit_keys: Gauge,
    /// `jacker_gate_ratelimit_store_errors_total`: shared rate-limit checks that Redis did not
    /// answer in time, judged by the replica's own budget instead.
    pub ratelimit_store_errors: Counter,
    /// `jacker_gate_untrusted_forwarded_total`: decision requests with `X-Forwarded-*` from a
    /// peer outside `server.trusted_proxies`.
    pub untrusted_forwarded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
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
        let logins_family = Family::<Labels, Counter>::default();
        registry.register(
            "jacker_gate_logins",
            "Login attempts by result",
            logins_family.clone(),
        );
        let logins = LoginResult::ALL.map(|r| {
            logins_family
                .get_or_create(&vec![("result", r.as_str())])
                .clone()
        });
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
        let ratelimit_store_errors = Counter::default();
        registry.register(
            "jacker_gate_ratelimit_store_errors",
            "Shared rate-limit checks Redis failed or did not answer in time (judged by the replica's own budget)",
            ratelimit_store_errors.clone(),
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
            ratelimit_store_errors,
            untrusted_forwarded,
        };
        m.set_decisions(&Counts::default());
        m
    }

    /// Counts one answer of `endpoint` with `verdict`, which took `seconds`.
    #[inline]
    pub fn record(&self, endpoint: Endpoint, verdict: VerdictLabel, seconds: f64) {
        let e = endpoint as usize;
        self.requests[e][verdict.index()].inc();
        self.durations[e].observe(seconds);
    }

    /// Counts one login attempt that ended with `result`.
    pub fn login(&self, result: LoginResult) {
        self.logins[result as usize].inc();
    }

    /// Counts one failed session store operation.
    pub fn store_error(&self, op: StoreOp) {
        self.session_store_errors
            .get_or_create(&vec![("op", op.as_str())])
            .inc();
    }

    /// Sets `jacker_gate_crowdsec_decisions` from the table's counts by type and scope.
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
        m.login(LoginResult::StoreError);
        m.store_error(StoreOp::LoginTake);
        let text = m.encode();
        for name in [
            "jacker_gate_requests_total{endpoint=\"auth\",verdict=\"banned\"} 1",
            "jacker_gate_request_duration_seconds_bucket{",
            "jacker_gate_crowdsec_decisions{type=\"ban\",scope=\"ip\"} 0",
            "jacker_gate_crowdsec_last_sync_timestamp_seconds ",
            "jacker_gate_crowdsec_sync_errors_total 1",
            "jacker_gate_logins_total{result=\"invalid_state\"} 0",
            "jacker_gate_logins_total{result=\"store_error\"} 1",
            "jacker_gate_session_store_errors_total{op=\"login_take\"} 1",
            "# TYPE jacker_gate_session_store_errors counter",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
