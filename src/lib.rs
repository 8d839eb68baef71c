//! jacker-gate: one ForwardAuth decision for every request that Traefik (or Caddy, or nginx) forwards.
//!
//! The crate is split into a pure core and one edge. The core — [`client_ip`], [`crowdsec::table`],
//! [`ratelimit`], [`rules`] and the pipeline in [`decision`] — is plain functions over plain data:
//! it does no IO and reads no clock of its own (the limiter's clock is injected). The edge —
//! [`http`], [`crowdsec::lapi`] and [`server`] — owns sockets, timers and the LAPI client, and
//! turns a [`decision::Verdict`] into a response in exactly one place.
//!
//! Modules in reading order: configuration, the core steps, the pipeline, then the edge.

pub mod clock;
pub mod config;
pub mod duration;

pub mod domain;

pub mod client_ip;
pub mod crowdsec;
pub mod ratelimit;
pub mod rules;

pub mod decision;
pub mod oauth;
pub mod session;

pub(crate) mod http;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod server;
pub(crate) mod shared_limit;
pub(crate) mod tls;

pub mod cli;

/// The most a page of the gate weighs, in bytes: Traefik reads every forwardAuth answer into a
/// buffer of `maxResponseBodySize`, which the deployment sets to at least twice this.
pub use http::page::MAX_PAGE_BYTES;

/// An error with its sources, `: `-joined: HTTP client errors keep the useful part (connection
/// refused, a certificate problem, a timeout) in their sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
