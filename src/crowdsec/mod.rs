//! The CrowdSec bouncer: a decision table in memory (pure, [`table`]), the LAPI wire format
//! ([`stream`]), and the client that keeps the table in sync or asks per IP ([`lapi`]).

pub(crate) mod lapi;
pub mod stream;
pub mod table;

pub use table::{DecisionTable, Remediation};
