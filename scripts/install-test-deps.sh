#!/usr/bin/env bash
# Installs the real peers the test suite talks to (CrowdSec LAPI, Redis, nginx, Caddy, wrk,
# Prometheus tools, Chromium, Node packages). Idempotent: a machine that has them all returns at once.
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
fi
