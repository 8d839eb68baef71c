#!/usr/bin/env bash
# The dependency policy of deny.toml, checked with cargo-deny: licenses (only those listed),
# bans (no openssl/native-tls, no wildcard versions; duplicates are warnings) and sources
# (crates.io only) every time; known vulnerabilities (the RustSec advisory database) whenever
# that database can be fetched or is already on the machine.
#
# Installs cargo-deny from crates.io when it is missing: a source build that takes several
# minutes once; when it is present this script takes about a second.
#
# The advisory database is a git repository outside the package registries. Where it cannot be
# fetched (as on our CI machines) the advisory check is skipped with a notice, unless
# DENY_REQUIRE_ADVISORIES=1 makes that an error. A database fetched earlier is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2

if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny.sh: installing cargo-deny $CARGO_DENY_VERSION from crates.io (a source build, several minutes once)" >&2
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi

checks=(licenses bans sources)
db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
offline=()
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  checks+=(advisories)
elif compgen -G "$db_dir/*/.git" >/dev/null; then
  echo "deny.sh: the advisory database cannot be fetched; checking against the copy fetched earlier" >&2
  checks+=(advisories)
  offline=(--offline)
elif [ "${DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  echo "deny.sh: the RustSec advisory database cannot be fetched and DENY_REQUIRE_ADVISORIES=1" >&2
  exit 1
else
  echo "deny.sh: advisories NOT checked: the RustSec advisory database cannot be fetched from this machine; run 'cargo deny check advisories' where it can" >&2
fi

cargo deny --locked "${offline[@]}" check --hide-inclusion-graph "${checks[@]}"
