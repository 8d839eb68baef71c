//! jacker-gate: one ForwardAuth decision for every request that Traefik (or Caddy, or nginx) forwards.
//!
//! The crate is split into a pure core and one edge. The core — [`client_ip`], [`crowdsec::table`],
//! [`ratelimit`], [`rules`] and the pipeline in [`decision`] — is plain functions over plain data:
//! it does no IO and reads no clock of its own (the limiter's clock is injected). The edge —
//! [`http`], [`crowdsec::lapi`] and [`server`] — owns sockets, timers and the LAPI client, and
//! turns a [`decision::Verdict`] into a response in exactly one place.
//!
//! Modules in reading order: configuration, the core steps, the pipeline, then the edge.

pub mod config;
pub mod duration;

pub mod client_ip;
pub mod crowdsec;
pub mod ratelimit;
pub mod rules;

pub mod decision;
pub mod oauth;
pub mod session;

pub mod http;
pub mod logging;
pub mod metrics;
pub mod server;
