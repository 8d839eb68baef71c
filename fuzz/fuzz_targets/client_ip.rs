//! `client_ip`. Input: line 1 the TCP peer, line 2 the trusted networks (comma-separated, read
//! as the config reads them; the default set when none parse), every further line one
//! `X-Forwarded-For` header line.
//!
//! Property: never panics; an untrusted peer is the answer whatever the headers say; otherwise
//! the answer is the peer or an address written in a header, found by walking right to left and
//! stopping at the first untrusted entry (unparseable there: an error; left of it: never read);
//! an address inside `trusted_proxies` is the answer only when every entry is trusted.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none client_ip -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::client_ip`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::client_ip(data));
