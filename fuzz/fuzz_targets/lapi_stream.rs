//! `lapi_stream`. Input: one or more LAPI bodies separated by NUL bytes (which no JSON holds);
//! the first parsed stream answer builds the table as at startup, each later one is applied
//! as an update. Every body is also read as a live-mode answer.
//!
//! Property: `parse_stream` and `parse_live` never panic, at any clock; every address they
//! yield is canonical; applying a parsed delta, looking up and sweeping never panic; every Ip
//! decision added with `until > now` is found by `lookup` at `now`; and the table answers every
//! lookup (at each expiry and just before it), its counts and its sweeps exactly as a
//! brute-force model of the decisions would.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none lapi_stream -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::lapi_stream`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::lapi_stream(data));
