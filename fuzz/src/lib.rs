//! The property checks of the jacker-gate fuzz targets, shared with the corpus replay in
//! `tests/gate/fuzz_regressions.rs` (which includes `checks.rs` by path). See `README.md`.

pub mod checks;
