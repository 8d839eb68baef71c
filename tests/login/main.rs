//! Login and everything in front of it: the gate with a real OpenID provider and Redis, behind
//! real Caddy, nginx and Traefik (with a CrowdSec agent reading Traefik's logs), in a real
//! Chromium, and under faults (Redis killed or frozen, the provider frozen, a misbehaving LAPI).
//!
//! One test binary, so that the support tree is compiled once for all of them. Tests that load
//! the machine (a load generator, a browser) or measure time against a documented bound (the
//! sign-out reaching every replica, the store and provider timeouts) take
//! `support::exclusive()` first, so that they never run beside each other.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod faults;
mod login;
mod pool;
mod proxies;
mod replicas;
mod traefik;
