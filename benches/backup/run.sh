#!/usr/bin/env bash
# One-off measurement of the backup service's script (compose/config/backup/backup.sh): backup,
# verify and restore times for a PostgreSQL database of 100k rows and a Redis holding 10k gate
# sessions, on loopback. Prints the three times; BENCHMARKS.md, "Backups", has the numbers.
#
#   bash benches/backup/run.sh [ROWS] [SESSIONS]       (defaults 100000 10000)
#
# Needs PostgreSQL (server and client), redis-server and redis-cli: bash compose/install-test-tools.sh.
# Builds and runs the mint_session example once, for the shape of a real session.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-100000}" sessions="${2:-10000}"
script="$PWD/compose/config/backup/backup.sh"

pgbin="$(dirname "$(command -v initdb 2>/dev/null || find /usr/lib/postgresql -path '*/bin/initdb' | sort | tail -n 1)")"
work="$(mktemp -d /tmp/jacker-backup-bench.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg() { # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; else "$@"; fi
}

# PostgreSQL with a password-authenticated superuser, as the stack's.
head -c 24 /dev/urandom | base64 | tr -d '\n/+=' >"$work/pgpw"
chmod 600 "$work/pgpw"
if [ "$(id -u)" = 0 ]; then chown postgres: "$work" "$work/pgpw"; fi
as_pg "$pgbin/initdb" -D "$work/pg" -U jacker --auth=scram-sha-256 --pwfile="$work/pgpw" >/dev/null
pg_port="$(free_port)"
as_pg "$pgbin/postgres" -D "$work/pg" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work" >"$work/pg.log" 2>&1 &
pids+=($!)
until pg_isready -q -h 127.0.0.1 -p "$pg_port"; do sleep 0.2; done
printf '127.0.0.1:%s:*:jacker:%s\n' "$pg_port" "$(cat "$work/pgpw")" >"$work/pgpass"
chmod 600 "$work/pgpass"
psql_() { PGPASSFILE="$work/pgpass" psql -X -q -w -h 127.0.0.1 -p "$pg_port" -U jacker "$@"; }
psql_ -d postgres -c "CREATE DATABASE jacker"
psql_ -d jacker -c "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, created timestamptz, data jsonb);
  INSERT INTO users SELECT g, 'user' || g || '@example.com', now() - g * interval '1 minute',
    jsonb_build_object('name', md5(g::text), 'groups', jsonb_build_array('a', 'b'))
  FROM generate_series(1, $rows) g;"

# Redis with a backup ACL user; sessions shaped as the gate writes them.
mkdir "$work/redis"
head -c 24 /dev/urandom | base64 | tr -d '\n/+=' >"$work/redispw"
printf 'user default on nopass ~* &* +@all\nuser backup on #%s -@all +auth +ping +replconf +sync +psync\n' \
  "$(tr -d '\n' <"$work/redispw" | sha256sum | cut -d ' ' -f 1)" >"$work/users.acl"
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --aclfile "$work/users.acl" \
  --appendonly yes --repl-diskless-sync-delay 0 >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
head -c 32 /dev/urandom | base64 >"$work/cookie_secret"
cargo run -q --release --example mint_session -- "redis://127.0.0.1:$redis_port/0" "$work/cookie_secret" >/dev/null
key="$(redis-cli -p "$redis_port" --scan --pattern 'jacker-gate:*' | head -n 1)"
value="$(redis-cli -p "$redis_port" --raw get "$key")"
# In RESP: the value is JSON, which redis-cli's inline syntax would split at its quotes.
for ((i = 1; i < sessions; i++)); do
  k="$(printf '%s:%064x' "${key%:*}" "$i")"
  # shellcheck disable=SC2016 # the dollars are RESP bulk-string markers
  printf '*4\r\n$5\r\nSETEX\r\n$%d\r\n%s\r\n$5\r\n86400\r\n$%d\r\n%s\r\n' "${#k}" "$k" "${#value}" "$value"
done | redis-cli -p "$redis_port" --pipe >/dev/null

export BACKUP_DIR="$work/backups" BACKUP_INTERVAL=1d BACKUP_KEEP_LAST=3 BACKUP_KEEP_DAILY_DAYS=1 \
  BACKUP_POSTGRES="main:127.0.0.1:$pg_port:jacker:jacker:$work/pgpw" \
  BACKUP_REDIS="127.0.0.1:$redis_port" BACKUP_REDIS_USER=backup BACKUP_REDIS_PASSWORD_FILE="$work/redispw" \
  BACKUP_REDIS_DATA_DIR="$work/redis" BACKUP_FILES=""
seconds_of() {
  local s="$EPOCHREALTIME"
  "$@" >/dev/null 2>"$work/last.log" || { cat "$work/last.log" >&2; exit 1; }
  awk -v s="$s" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.2f", e - s }'
}

keys="$(redis-cli -p "$redis_port" dbsize)"
t_backup="$(seconds_of bash "$script" backup)"
folder="$(ls "$BACKUP_DIR")"
t_verify="$(seconds_of bash "$script" verify "$folder")"
psql_ -d jacker -c "DROP TABLE users"
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
sleep 0.5
t_restore="$(seconds_of bash "$script" restore "$folder")"
got_rows="$(psql_ -d jacker -A -t -c 'SELECT count(*) FROM users')"
echo "rows $rows (restored $got_rows), Redis keys $keys, backup size $(du -sh "$BACKUP_DIR/$folder" | cut -f 1)"
echo "backup  ${t_backup} s"
echo "verify  ${t_verify} s (checksums, trial restore into a scratch database and a scratch Redis)"
echo "restore ${t_restore} s (verify included)"
