//! `email_policy`. Input: line 1 the email; line 2 `email_verified` (`1`/`t` true, `0`/`f`
//! false, else missing); line 3 `require_hd` (any byte: on); line 4 the allowed domains and
//! line 5 the allowed emails, comma-separated (missing: `example.com` and
//! `contractor@gmail.com`; empty: none); line 6, if present, the `hd` claim.
//!
//! Property: never panics; `Allowed` implies `verified == Some(true)`, exactly one `@`, and
//! either the whole address (lower-cased) is in `allowed_emails` or the part after the `@`
//! equals an allowed domain exactly, and then, with `require_hd`, `hd` equals that domain;
//! anything not verified is `Unverified`; `allows_session` admits the same way; `normalize`
//! yields the lower-cased address only for a plain `local@domain`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none email_policy -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::email_policy`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::email_policy(data));
