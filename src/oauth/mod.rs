//! Login with an OpenID provider (Google, or any issuer with discovery): authorization code
//! with PKCE (S256), a fresh `state` and `nonce` per attempt, and local ID-token checks.
//!
//! The pure policies — who may enter ([`email`]) and where a login may return to
//! ([`redirect`]) — are public; the provider client (`provider`) is the edge and private to
//! the crate.

pub mod email;
pub mod redirect;

pub(crate) mod provider;

pub(crate) use provider::{Identity, Provider, ProviderError};
