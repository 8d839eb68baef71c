#!/usr/bin/env bash
# Installs the real peers of the login tests (tests/login.rs, tests/proxies.rs, tests/browser.rs):
# Debian's chromium, caddy, nginx and redis-server, Node.js, and the npm packages of
# tests/support/oidc (oidc-provider, the stand-in for Google) and tests/support/browser
# (playwright-core, driving Debian's chromium; it never downloads a browser).
# Idempotent, and quick when everything is there: npm ci only runs when package-lock.json changed.
set -euo pipefail
cd "$(dirname "$0")"

apt_pkgs=(chromium caddy nginx redis-server)
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

for dir in oidc browser; do
  stamp="$dir/node_modules/.installed-lock-sha256"
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  echo "npm ci in tests/support/$dir"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
done
