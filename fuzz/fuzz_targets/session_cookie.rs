//! `session_cookie`. Input: a cookie value (read lossily); its bytes also pick an id to sign,
//! the purpose, and the bytes that replace each byte of the signed value in turn. Every line is
//! also read as a `Cookie` header.
//!
//! Property: never panics; any input verifies only if it is exactly what `sign` produces for
//! the id it yields and that purpose (so no other encoding, key or purpose passes); a signed
//! value verifies for its own purpose only, and not under another secret; changing any byte,
//! dropping one or adding one never verifies, for either purpose.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none session_cookie -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::session_cookie`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::session_cookie(data));
