//! The fuzz corpus and every input the fuzzers found, replayed through the fuzz targets'
//! property checks in the normal test run (a few seconds; the long fuzz runs are documented in
//! `fuzz/README.md`, not run here).
//!
//! The checks are the fuzz crate's own `fuzz/src/checks.rs`, included by path, so a target and
//! its replay can never drift apart. Files live in `fuzz/corpus/<target>/` (what the fuzzers
//! kept, minimised) and `fuzz/regressions/<target>/` (inputs that once broke a property). A
//! regression whose fix has not landed yet is named `FIXME-...`: it is replayed too, and the
//! test asserts it still fails, so the fix shows up here as a file to rename.

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::panic;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `(target, file)` for every file under `dir/<target>/`; a directory that names no target is
/// an error, so a new target cannot be left out of the replay.
fn inputs(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return out;
    };
    for target in targets {
        let target = target.expect("readable directory").path();
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (name, _) = checks::TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("{} is not a fuzz target", target.display()));
        for file in std::fs::read_dir(&target).expect("readable directory") {
            let file = file.expect("readable directory").path();
            if file.is_file() {
                out.push((*name, file));
            }
        }
    }
    out.sort();
    out
}

fn check_for(target: &str) -> checks::Check {
    checks::TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, f)| *f)
        .expect("listed target")
}

fn holds(target: &str, file: &Path) -> bool {
    let data = std::fs::read(file).expect("readable input");
    let check = check_for(target);
    panic::catch_unwind(|| check(&data)).is_ok()
}

fn is_fixme(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("FIXME-"))
}

/// Every file in `fuzz/corpus/<target>/` keeps the target's property.
fn corpus_holds(target: &str) {
    let inputs = inputs(&fuzz_dir().join("corpus"));
    let mine: Vec<&PathBuf> = inputs
        .iter()
        .filter(|(t, _)| *t == target)
        .map(|(_, f)| f)
        .collect();
    assert!(!mine.is_empty(), "no corpus for {target}");
    let broken: Vec<String> = mine
        .iter()
        .filter(|f| !holds(target, f))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        broken.is_empty(),
        "{target}: properties broken by:\n{}",
        broken.join("\n")
    );
}

macro_rules! corpus {
    ($($target:ident),* $(,)?) => {
        /// One test per target, so they run in parallel and a failure names its target.
        mod corpus {
            $(
                #[test]
                fn $target() {
                    super::corpus_holds(stringify!($target));
                }
            )*

            #[test]
            fn covers_every_target() {
                let listed = [$(stringify!($target)),*];
                for (t, _) in super::checks::TARGETS {
                    assert!(listed.contains(t), "{t} has no corpus test");
                }
            }
        }
    };
}

corpus!(
    client_ip,
    lapi_stream,
    session_cookie,
    redirect,
    email_policy,
    config,
    decision,
);

#[test]
fn fixed_regressions_stay_fixed() {
    let broken: Vec<String> = inputs(&fuzz_dir().join("regressions"))
        .iter()
        .filter(|(_, f)| !is_fixme(f))
        .filter(|(t, f)| !holds(t, f))
        .map(|(t, f)| format!("{t}: {}", f.display()))
        .collect();
    assert!(
        broken.is_empty(),
        "regressions are back:\n{}",
        broken.join("\n")
    );
}

/// FIXME: each `FIXME-*` file is a property violation the fuzzers found whose fix is not in
/// `src/` yet (see `fuzz/README.md`, "Findings"). Today's behaviour is asserted: the check
/// still fails. When a fix lands this test names the file: drop its `FIXME-` prefix.
#[test]
fn open_findings_still_reproduce() {
    let fixed: Vec<String> = inputs(&fuzz_dir().join("regressions"))
        .iter()
        .filter(|(_, f)| is_fixme(f))
        .filter(|(t, f)| holds(t, f))
        .map(|(t, f)| format!("{t}: {}", f.display()))
        .collect();
    assert!(
        fixed.is_empty(),
        "fixed now (rename without FIXME-):\n{}",
        fixed.join("\n")
    );
}
