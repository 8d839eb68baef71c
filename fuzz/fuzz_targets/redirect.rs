//! `redirect`. Input: line 1 the `rd` value; line 2, if present, the origin's scheme and line 3
//! its host (the request that triggered the login). Checked against [`REDIRECT_DOMAINS`], with
//! `allow_http` off and on.
//!
//! Property: never panics; a `Some(url)` has scheme https (http only when `allow_http`), no
//! user info, a domain or IPv4 host that equals an entry or is a subdomain of a `.` entry (on a
//! label boundary), and the entry's port (or the scheme's default); and the URL, printed as a
//! `Location` header and parsed again, is the same URL.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none redirect -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::redirect`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::redirect(data));
