#!/usr/bin/env bash
# The one test command (README "Test"; .ci/run calls exactly this): installs the real peers the
# tests talk to, then checks formatting and lints, then runs every test, unit and integration,
# the benches once each in test mode, and a smoke of the load benchmark. Idempotent and quick when everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
bash tests/support/install-login-peers.sh
if [ -f compose/install-test-tools.sh ]; then
  bash compose/install-test-tools.sh >/dev/null
fi

cargo fmt --all -- --check
# The structure ARCHITECTURE.md promises: the core imports no edge module, no module cycles,
# no file over 600 lines, no unused dependency.
python3 scripts/check-structure.py
cargo clippy --all-targets --locked -- -D warnings
bash scripts/deny.sh
cargo test --all-targets --locked
# A short smoke of the load benchmark (release build, every scenario for 1 s, each checked to
# answer what it claims); the full run is documented in BENCHMARKS.md.
python3 benches/load/run.py --smoke
