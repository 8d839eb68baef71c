//! `config`. Input: the config text, then environment variables `NAME=value` each after a NUL
//! byte. Inputs whose `*_file` keys name a path are skipped ([`reads_outside`]).
//!
//! Property: never panics (nor do `warnings` and `to_toml` on what it accepts); when the text
//! and environment parse, `parse(&config.to_toml(), &[])` is `Ok` of the same config (the
//! printed config is the effective one and loads back unchanged).
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none config -- -jobs=1 -max_total_time=600` (see
//! `fuzz/README.md`). The check itself is `jacker_gate_fuzz::checks::config`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jacker_gate_fuzz::checks::config(data));
