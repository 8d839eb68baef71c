//! `decision`. Input: line 1 the TCP peer; lines 2, 3 and 4 `X-Forwarded-Method`, `-Host` and
//! `-Uri` (a missing line, the single byte `0xff` or, for method and host, invalid UTF-8: the
//! header is missing or repeated); every further line one `X-Forwarded-For` header line. The
//! request goes through `client_ip` and `decide` as the `/auth` endpoint does, with trusted
//! proxies `10/8`, `127/8`, `fd00::/8`, rate limiting off, CrowdSec clear, no login, and rules
//! denying the path prefix [`DENIED_PATH`] and the host [`DENIED_HOST`].
//!
//! Property: never panics; `Allow` implies the forwarded-for walk succeeded, every header was
//! present, `normalize_path` accepted the target and its path is not under `/admin`, and
//! `normalize_host` accepted the host and it is not `admin.example.com`; and no other likely
//! upstream reading of the path (decoded and cleaned as Go or RFC 3986 do) nor of the host
//! (name before the last `:`, trailing dots dropped, lower-cased) reaches the denied ones.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none decision -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::decision`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::decision(data));
