//! The gate on its own and with a CrowdSec LAPI: the command line, the forwardAuth endpoint,
//! resource limits, stream and live mode against a real LAPI (also over TLS), and the fuzz
//! corpora replayed through the fuzz targets' checks.
//!
//! One test binary, so that the support tree is compiled once for all of them. Tests that load
//! the machine or measure time against a documented bound take `support::exclusive()` first, so
//! that they never run beside each other.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod crowdsec;
mod crowdsec_tls;
mod forward_auth;
mod fuzz_regressions;
mod limits;
mod shared_limit;
