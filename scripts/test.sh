#!/usr/bin/env bash
# The one test command (README "Test"; .ci/run calls exactly this): installs the real peers the
# tests talk to, then checks formatting and lints, then runs every test, unit and integration,
# the benches once each in test mode, and a smoke of the load benchmark. Idempotent and quick when
# everything is installed. It ends by checking that nothing it started still listens.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/install-common.sh
. scripts/install-common.sh
jg_apt_install iproute2 # ss, for the listener check below
command -v python3 >/dev/null 2>&1 || jg_apt_install python3 # the load benchmark's smoke

# Every process this command starts carries this mark in its environment (not named
# JACKER_GATE_*: the gate would read it as a config key).
JG_TEST_RUN="$$-$(date +%s%N)"
export JG_TEST_RUN

# "ADDRESS PID" for every TCP listener on a loopback or wildcard address.
listeners() {
  ss -Hltnp | awk '$4 ~ /^(127\.|0\.0\.0\.0:|\*:|\[::\]:|\[::1\]:|\[::ffff:127\.)/ {
    s = $0
    while (match(s, /pid=[0-9]+/)) { print $4, substr(s, RSTART + 4, RLENGTH - 4); s = substr(s, RSTART + RLENGTH) }
  }' | LC_ALL=C sort -u
}
# Started by this command: it carries the mark, or (systemd) a service unit started meanwhile.
started_here() {
  tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qx "JG_TEST_RUN=$JG_TEST_RUN" ||
    { [ -d /run/systemd/system ] && grep -q 'system\.slice/.*\.service' "/proc/$1/cgroup" 2>/dev/null; }
}
leftovers() {
  local addr pid
  LC_ALL=C comm -13 <(printf '%s\n' "$listeners_before") <(listeners) | while read -r addr pid; do
    if started_here "$pid"; then
      echo "  $addr  pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"
    fi
  done
}
check_listeners() {
  local status=$? left=""
  for _ in $(seq 20); do # a peer being stopped may need a moment
    left="$(leftovers)"
    [ -n "$left" ] || break
    sleep 0.5
  done
  if [ -n "$left" ]; then
    printf 'test.sh: the test command left these listeners behind:\n%s\n' "$left" >&2
    [ "$status" -ne 0 ] || status=1
  fi
  exit "$status"
}
listeners_before="$(listeners)"
trap check_listeners EXIT

bash scripts/install-test-deps.sh
bash tests/support/install-login-peers.sh
bash compose/install-test-tools.sh >/dev/null
# The Node.js and docker-compose the install scripts linked there, when they did.
export PATH="$JG_BIN:$PATH"

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
