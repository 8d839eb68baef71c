#!/usr/bin/env bash
# The Jacker stack's backups: both PostgreSQL databases (pg_dump custom format), a Redis snapshot
# (redis-cli --rdb, as a replica would receive it) and the file state (Grafana, Traefik's
# acme.json, CrowdSec's database and local config), one dated folder per backup with a MANIFEST
# of every file, its size and its SHA-256.
#
#   backup.sh loop             back up every BACKUP_INTERVAL, pruning after each (the service)
#   backup.sh backup           one backup now, then prune
#   backup.sh list             the backups, oldest first, with their age and size
#   backup.sh verify FOLDER    checksums, then a trial restore into a scratch database and a
#                              scratch Redis; exit 1 when anything does not hold
#   backup.sh restore FOLDER   verify, then restore into the stopped stack (databases dropped and
#                              recreated, Redis's data files and the file state replaced)
#   backup.sh prune            apply the retention
#   backup.sh health           exit 1 when the newest backup is older than the schedule allows
#
# The same script runs in the `backup` container and in the project's tests; everything it
# reaches comes from the environment (defaults are the container's):
#   BACKUP_DIR                 where backups live (/backups)
#   BACKUP_INTERVAL            time between backups: 30m, 6h, 1d, or seconds (1d)
#   BACKUP_KEEP_LAST           always keep the newest N backups (7)
#   BACKUP_KEEP_DAILY_DAYS     also keep the newest backup of each of the last D days (14)
#   BACKUP_HEALTH_GRACE        how much longer than BACKUP_INTERVAL a backup may take (1h)
#   BACKUP_POSTGRES            databases, space-separated name:host:port:database:user:password-file
#   BACKUP_REDIS               host:port of Redis (empty: no Redis backup)
#   BACKUP_REDIS_USER, BACKUP_REDIS_PASSWORD_FILE   its ACL user (backup) and password file
#   BACKUP_REDIS_DATA_DIR      Redis's data directory (restore only: dump.rdb and appendonlydir)
#   BACKUP_FILES               directories, space-separated name:path (archived as files/NAME.tar.gz)
#   BACKUP_RUN_AS              started as root, drop to this user, keeping only the capability
#                              to read files it does not own (acme.json is root's, mode 600)
#   BACKUP_NOW                 the current time in Unix seconds (tests of the retention)
#
# Passwords are read from the secret files and handed to pg_dump/psql through a private
# PGPASSFILE and to redis-cli through REDISCLI_AUTH, never on a command line or in a log.
set -euo pipefail
# Byte order for sort and comm, whatever the locale.
export LC_ALL=C

BACKUP_DIR="${BACKUP_DIR:-/backups}"
BACKUP_INTERVAL="${BACKUP_INTERVAL:-1d}"
BACKUP_KEEP_LAST="${BACKUP_KEEP_LAST:-7}"
BACKUP_KEEP_DAILY_DAYS="${BACKUP_KEEP_DAILY_DAYS:-14}"
BACKUP_HEALTH_GRACE="${BACKUP_HEALTH_GRACE:-1h}"
BACKUP_POSTGRES="${BACKUP_POSTGRES:-}"
BACKUP_REDIS="${BACKUP_REDIS:-}"
BACKUP_REDIS_USER="${BACKUP_REDIS_USER:-backup}"
BACKUP_REDIS_PASSWORD_FILE="${BACKUP_REDIS_PASSWORD_FILE:-/run/secrets/redis_backup_password}"
BACKUP_REDIS_DATA_DIR="${BACKUP_REDIS_DATA_DIR:-}"
BACKUP_FILES="${BACKUP_FILES:-}"

log() { printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# In the container the entrypoint is this script, as root: it drops to BACKUP_RUN_AS at once. The
# ambient DAC_READ_SEARCH lets the unprivileged process read the secrets and the volumes of other
# services (owned by their UIDs, some mode 600) without being able to write to them.
if [ "$(id -u)" = 0 ] && [ -n "${BACKUP_RUN_AS:-}" ]; then
  exec setpriv --reuid="$BACKUP_RUN_AS" --regid="$BACKUP_RUN_AS" --clear-groups \
    --inh-caps=-all,+dac_read_search --ambient-caps=-all,+dac_read_search \
    --bounding-set=-all,+dac_read_search -- "$0" "$@"
fi

now() { printf '%s\n' "${BACKUP_NOW:-$(date +%s)}"; }

seconds() { # seconds DURATION: 90, 30m, 6h, 1d
  local v="$1"
  case "$v" in
    *[!0-9smhd]* | "" | [smhd]*) return 1 ;;
  esac
  case "$v" in
    *s) echo "${v%s}" ;;
    *m) echo $(("${v%m}" * 60)) ;;
    *h) echo $(("${v%h}" * 3600)) ;;
    *d) echo $(("${v%d}" * 86400)) ;;
    *) echo "$v" ;;
  esac
}

# Checks the settings every command depends on; a wrong value stops here with what to fix.
check_settings() {
  local n
  if ! seconds "$BACKUP_INTERVAL" >/dev/null || [ "$(seconds "$BACKUP_INTERVAL")" -eq 0 ]; then
    die "BACKUP_INTERVAL=$BACKUP_INTERVAL is not a duration (examples: 30m, 6h, 1d)"
  fi
  seconds "$BACKUP_HEALTH_GRACE" >/dev/null \
    || die "BACKUP_HEALTH_GRACE=$BACKUP_HEALTH_GRACE is not a duration (examples: 30m, 1h)"
  for n in BACKUP_KEEP_LAST BACKUP_KEEP_DAILY_DAYS; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n=${!n} is not a whole number"
  done
  [ "$BACKUP_KEEP_LAST" -ge 1 ] || die "BACKUP_KEEP_LAST=0 would delete every backup; use 1 or more"
}

# --- Where things are -----------------------------------------------------------------------

# The complete backups (a backup in progress is FOLDER.partial), oldest first: names are UTC
# timestamps, so name order is time order.
# A folder without a MANIFEST (one being copied in, or renamed by hand) is not a backup: it is
# left alone, so that it never stops the list, the retention or the healthcheck.
backups() {
  [ -d "$BACKUP_DIR" ] || return 0
  local d
  find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*T[0-9]*Z*' ! -name '*.partial' \
    -printf '%f\n' | sort | while IFS= read -r d; do
    if [ -f "$BACKUP_DIR/$d/MANIFEST" ]; then printf '%s\n' "$d"; fi
  done
}

folder_path() { # folder_path NAME-OR-PATH: the backup folder, which must exist
  local f="$1"
  case "$f" in */*) ;; *) f="$BACKUP_DIR/$f" ;; esac
  [ -d "$f" ] || die "no backup folder $f (compose/jacker list shows them)"
  [ -f "$f/MANIFEST" ] || die "$f has no MANIFEST: not a complete backup"
  printf '%s\n' "$f"
}

created_of() { sed -n 's/^# created \([0-9]*\)$/\1/p' "$1/MANIFEST"; }

# --- Credentials ----------------------------------------------------------------------------

tmp=""
scratch_redis_pid=""
scratch_db=""
scratch_db_entry=""
cleanup() {
  if [ -n "$scratch_redis_pid" ]; then kill "$scratch_redis_pid" 2>/dev/null || true; fi
  if [ -n "$scratch_db" ]; then
    psql_as "$scratch_db_entry" postgres -c "DROP DATABASE IF EXISTS \"$scratch_db\"" >/dev/null 2>&1 || true
  fi
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
work_dir() {
  if [ -z "$tmp" ]; then
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/jacker-backup.XXXXXX")"
    chmod 700 "$tmp"
  fi
}

secret() { # secret FILE: its content without a trailing newline
  if [ ! -r "$1" ] || [ ! -s "$1" ]; then
    die "secret file $1 is missing, empty or unreadable (compose/secrets.sh creates it)"
  fi
  tr -d '\r\n' <"$1"
}

# Fields of a BACKUP_POSTGRES entry name:host:port:database:user:password-file.
pg_fields() {
  IFS=: read -r pg_name pg_host pg_port pg_db pg_user pg_pass <<<"$1"
  if [ -z "$pg_host" ] || [ -z "$pg_port" ] || [ -z "$pg_db" ] || [ -z "$pg_user" ] \
    || [ -z "$pg_pass" ] || ! [[ "$pg_name" =~ ^[A-Za-z0-9_-]+$ ]]; then
    die "BACKUP_POSTGRES entry '$1' is not name:host:port:database:user:password-file"
  fi
}

# Writes a PGPASSFILE for one entry and exports it: libpq reads the password from there.
use_pg() {
  pg_fields "$1"
  work_dir
  local escaped
  escaped="$(secret "$pg_pass" | sed 's/[\\:]/\\&/g')"
  umask 077
  printf '%s:%s:*:%s:%s\n' "$pg_host" "$pg_port" "$pg_user" "$escaped" >"$tmp/pgpass.$pg_name"
  export PGPASSFILE="$tmp/pgpass.$pg_name" PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning"
}

psql_as() { # psql_as ENTRY DATABASE ARGS...
  local entry="$1" db="$2"
  shift 2
  use_pg "$entry"
  psql -X -q -v ON_ERROR_STOP=1 -w -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" "$@"
}

redis_cli() { # redis-cli against BACKUP_REDIS as BACKUP_REDIS_USER
  local host="${BACKUP_REDIS%:*}" port="${BACKUP_REDIS##*:}" password
  password="$(secret "$BACKUP_REDIS_PASSWORD_FILE")"
  REDISCLI_AUTH="$password" redis-cli --no-auth-warning -h "$host" -p "$port" \
    --user "$BACKUP_REDIS_USER" "$@"
}

files_fields() { # name:path
  IFS=: read -r f_name f_path <<<"$1"
  if [ -z "$f_path" ] || ! [[ "$f_name" =~ ^[A-Za-z0-9_-]+$ ]]; then
    die "BACKUP_FILES entry '$1' is not name:path"
  fi
}

# --- backup ---------------------------------------------------------------------------------

lock() {
  mkdir -p "$BACKUP_DIR"
  exec 9>"$BACKUP_DIR/.lock"
  flock -n 9 || die "another backup or restore is running in $BACKUP_DIR"
}

do_backup() {
  local stamp name dir entry started size
  if [ -z "$BACKUP_POSTGRES$BACKUP_REDIS$BACKUP_FILES" ]; then
    die "nothing to back up: BACKUP_POSTGRES, BACKUP_REDIS and BACKUP_FILES are all empty"
  fi
  lock
  started="$(date +%s)"
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  name="$stamp"
  local i=1
  while [ -e "$BACKUP_DIR/$name" ] || [ -e "$BACKUP_DIR/$name.partial" ]; do
    i=$((i + 1))
    name="$stamp-$i"
  done
  dir="$BACKUP_DIR/$name.partial"
  mkdir -p "$dir/postgres" "$dir/redis" "$dir/files"
  log "backup $name started"

  for entry in $BACKUP_POSTGRES; do
    use_pg "$entry"
    pg_dump -Fc -w -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$pg_db" -f "$dir/postgres/$pg_name.dump" \
      || { rm -rf "$dir"; die "pg_dump of $pg_name ($pg_db on $pg_host:$pg_port) failed"; }
    # Recorded so that verify knows the database's name and how many tables to expect.
    local tables
    tables="$(psql_as "$entry" "$pg_db" -A -t -c \
      "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")"
    printf '# postgres %s %s %s\n' "$pg_name" "$pg_db" "$tables" >>"$dir/.meta"
  done

  if [ -n "$BACKUP_REDIS" ]; then
    redis_cli --rdb "$dir/redis/dump.rdb" >/dev/null 2>"$dir/.redis-err" \
      || { local err; err="$(cat "$dir/.redis-err")"; rm -rf "$dir"; die "Redis snapshot from $BACKUP_REDIS failed: $err"; }
    rm -f "$dir/.redis-err"
  fi

  for entry in $BACKUP_FILES; do
    files_fields "$entry"
    [ -d "$f_path" ] || { rm -rf "$dir"; die "$f_name: $f_path is not a directory"; }
    tar --numeric-owner -C "$f_path" -czf "$dir/files/$f_name.tar.gz" . \
      || { rm -rf "$dir"; die "archiving $f_name ($f_path) failed"; }
  done

  # The manifest: every file of the backup, its size in bytes and its SHA-256.
  {
    printf '# jacker backup\n# created %s\n' "$started"
    if [ -f "$dir/.meta" ]; then cat "$dir/.meta"; fi
    (cd "$dir" && find . -type f ! -name '.*' ! -name MANIFEST -printf '%P\n' | sort | while read -r f; do
      printf '%s  %s  %s\n' "$(sha256sum "$f" | cut -d ' ' -f 1)" "$(stat -c %s "$f")" "$f"
    done)
  } >"$dir/.manifest.tmp"
  rm -f "$dir/.meta"
  mv "$dir/.manifest.tmp" "$dir/MANIFEST"
  # Complete only now: a folder without `.partial` always has its manifest.
  mv "$dir" "$BACKUP_DIR/$name"
  size="$(du -sk "$BACKUP_DIR/$name" | cut -f 1)"
  log "backup $name done: $(grep -vc '^#' "$BACKUP_DIR/$name/MANIFEST") files, ${size} KiB, $(($(date +%s) - started)) s"
  printf '%s\n' "$name"
}

# --- retention ------------------------------------------------------------------------------

# Keeps the newest BACKUP_KEEP_LAST backups and the newest backup of each of the last
# BACKUP_KEEP_DAILY_DAYS days (UTC); deletes the rest and any partial folder left by a crash.
do_prune() {
  local t all keep=" " day created n days_ago
  t="$(now)"
  mapfile -t all < <(backups)
  n="${#all[@]}"
  local i seen_days=" "
  for ((i = n - 1; i >= 0; i--)); do
    if [ $((n - 1 - i)) -lt "$BACKUP_KEEP_LAST" ]; then keep+="${all[$i]} "; fi
    created="$(created_of "$BACKUP_DIR/${all[$i]}")"
    [ -n "$created" ] || continue
    day=$((created / 86400))
    days_ago=$((t / 86400 - day))
    if [ "$days_ago" -lt "$BACKUP_KEEP_DAILY_DAYS" ] && [[ "$seen_days" != *" $day "* ]]; then
      seen_days+="$day "
      keep+="${all[$i]} "
    fi
  done
  for name in "${all[@]}"; do
    if [[ "$keep" != *" $name "* ]]; then
      log "prune: deleting $name"
      rm -rf "${BACKUP_DIR:?}/$name"
    fi
  done
  find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '*.partial' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
}

# --- list, health ---------------------------------------------------------------------------

do_list() {
  local name created t
  t="$(now)"
  while IFS= read -r name; do
    created="$(created_of "$BACKUP_DIR/$name")"
    printf '%s  %s  age %ss\n' "$name" "$(du -sh "$BACKUP_DIR/$name" | cut -f 1)" "$((t - ${created:-0}))"
  done < <(backups)
}

do_health() {
  local newest created age max
  newest="$(backups | tail -n 1)"
  [ -n "$newest" ] || { echo "no backup yet in $BACKUP_DIR"; exit 1; }
  created="$(created_of "$BACKUP_DIR/$newest")"
  age=$(($(now) - ${created:-0}))
  max=$(($(seconds "$BACKUP_INTERVAL") + $(seconds "$BACKUP_HEALTH_GRACE")))
  if [ "$age" -gt "$max" ]; then
    echo "the newest backup, $newest, is ${age}s old: more than BACKUP_INTERVAL + BACKUP_HEALTH_GRACE (${max}s)"
    exit 1
  fi
  echo "ok: newest backup $newest, ${age}s old"
}

# --- verify ---------------------------------------------------------------------------------

# Every file of the manifest present with its size and checksum, and no file it does not list.
check_sums() { # check_sums DIR
  local dir="$1" sum size path bad=0 actual listed odd
  listed="$(grep -v '^#' "$dir/MANIFEST" | awk '{print $3}' | sort)"
  [ -n "$listed" ] || { log "verify: $dir/MANIFEST lists no file"; return 1; }
  # Only regular files and directories, nothing that points elsewhere: restore reads files by
  # name, and a link would make it read (and verify would checksum) a file outside the backup.
  odd="$(cd "$dir" && find . -mindepth 1 ! -type f ! -type d -printf '%P\n')"
  if [ -n "$odd" ]; then
    log "verify: not a regular file (a link, a pipe or a device): $(echo "$odd" | tr '\n' ' ')"
    bad=1
  fi
  while read -r sum size path; do
    [ -n "$sum" ] || continue
    case "$path" in
      /* | .. | ../* | */.. | */../*)
        log "verify: the manifest names $path, outside the backup folder"; bad=1; continue ;;
    esac
    if [ ! -f "$dir/$path" ] || [ -L "$dir/$path" ]; then
      log "verify: $path is missing"; bad=1; continue
    fi
    actual="$(stat -c %s "$dir/$path")"
    if [ "$actual" != "$size" ]; then
      log "verify: $path is $actual bytes, the manifest says $size"; bad=1; continue
    fi
    actual="$(sha256sum "$dir/$path" | cut -d ' ' -f 1)"
    if [ "$actual" != "$sum" ]; then
      log "verify: $path has SHA-256 $actual, the manifest says $sum: the file changed since the backup"
      bad=1
    fi
  done < <(grep -v '^#' "$dir/MANIFEST")
  local extra
  extra="$(comm -13 <(printf '%s\n' "$listed") <(cd "$dir" && find . -type f ! -name MANIFEST -printf '%P\n' | sort))"
  if [ -n "$extra" ]; then log "verify: files not in the manifest: $(echo "$extra" | tr '\n' ' ')"; bad=1; fi
  return "$bad"
}

# Loads dump.rdb into a throw-away redis-server on a private socket; sets trial_keys to its
# key count.
trial_keys=0
trial_redis() { # trial_redis RDB
  work_dir
  local d="$tmp/scratch-redis" i
  mkdir -p "$d"
  cp "$1" "$d/dump.rdb"
  redis-server --port 0 --unixsocket "$d/redis.sock" --unixsocketperm 700 --dir "$d" \
    --dbfilename dump.rdb --appendonly no --save '' --logfile "$d/redis.log" &
  scratch_redis_pid=$!
  for ((i = 0; i < 600; i++)); do
    if [ -S "$d/redis.sock" ] && redis-cli -s "$d/redis.sock" ping 2>/dev/null | grep -q PONG; then break; fi
    if ! kill -0 "$scratch_redis_pid" 2>/dev/null; then
      log "verify: a scratch Redis refused redis/dump.rdb: $(tail -n 3 "$d/redis.log" | tr '\n' ' ')"
      scratch_redis_pid=""
      return 1
    fi
    sleep 0.1
  done
  trial_keys="$(redis-cli -s "$d/redis.sock" info keyspace | sed -n 's/^db[0-9]*:keys=\([0-9]*\),.*/\1/p' | awk '{s += $1} END {print s + 0}')"
  redis-cli -s "$d/redis.sock" shutdown nosave >/dev/null 2>&1 || true
  wait "$scratch_redis_pid" 2>/dev/null || true
  scratch_redis_pid=""
}

# Restores one dump into a scratch database on the same server and counts its tables.
trial_postgres() { # trial_postgres ENTRY DUMP WANT-TABLES
  local entry="$1" dump="$2" want="$3" got
  pg_fields "$entry"
  scratch_db="${pg_db}_verify_$$"
  scratch_db_entry="$entry"
  psql_as "$entry" postgres -c "DROP DATABASE IF EXISTS \"$scratch_db\"" -c "CREATE DATABASE \"$scratch_db\"" >/dev/null
  use_pg "$entry"
  if ! pg_restore -w -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$scratch_db" --exit-on-error "$dump" 2>"$tmp/restore.err"; then
    log "verify: postgres/$pg_name.dump does not restore: $(head -c 500 "$tmp/restore.err")"
    return 1
  fi
  got="$(psql_as "$entry" "$scratch_db" -A -t -c \
    "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")"
  psql_as "$entry" postgres -c "DROP DATABASE \"$scratch_db\"" >/dev/null
  scratch_db=""
  if [ -n "$want" ] && [ "$got" != "$want" ]; then
    log "verify: postgres/$pg_name.dump restored $got tables, the backup recorded $want"
    return 1
  fi
  log "verify: postgres/$pg_name.dump restores ($got tables) into a scratch database"
}

do_verify() { # do_verify FOLDER
  local dir name entry want f
  dir="$(folder_path "$1")"
  work_dir
  name="$(basename "$dir")"
  if ! check_sums "$dir"; then
    log "verify: backup $name is CORRUPT: its files do not match its MANIFEST; never restore it"
    return 1
  fi
  log "verify: every checksum of $name matches its MANIFEST"
  for f in "$dir"/files/*.tar.gz; do
    [ -e "$f" ] || continue
    tar -tzf "$f" >/dev/null 2>&1 || { log "verify: ${f#"$dir"/} is not a readable archive"; return 1; }
  done
  for f in "$dir"/postgres/*.dump; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .dump)"
    entry=""
    for e in $BACKUP_POSTGRES; do
      pg_fields "$e"
      if [ "$pg_name" = "$name" ]; then entry="$e"; fi
    done
    [ -n "$entry" ] || { log "verify: postgres/$name.dump has no BACKUP_POSTGRES entry named $name to restore it on"; return 1; }
    want="$(sed -n "s/^# postgres $name [^ ]* \([0-9]*\)$/\1/p" "$dir/MANIFEST")"
    trial_postgres "$entry" "$f" "$want" || return 1
  done
  if [ -f "$dir/redis/dump.rdb" ]; then
    trial_redis "$dir/redis/dump.rdb" || return 1
    log "verify: redis/dump.rdb loads into a scratch Redis ($trial_keys keys)"
  fi
  log "verify: backup $(basename "$dir") is good"
}

# --- restore --------------------------------------------------------------------------------

do_restore() { # do_restore FOLDER
  local dir entry f
  dir="$(folder_path "$1")"
  lock
  do_verify "$dir" || die "restore refused: backup $(basename "$dir") failed verification; nothing was changed"

  # Redis must be down: it would write its own data over the restored files when it stops.
  if [ -f "$dir/redis/dump.rdb" ]; then
    if [ -z "$BACKUP_REDIS_DATA_DIR" ] || [ ! -d "$BACKUP_REDIS_DATA_DIR" ]; then
      die "BACKUP_REDIS_DATA_DIR (Redis's data directory) is not set or not a directory"
    fi
    if [ -n "$BACKUP_REDIS" ] && redis-cli -h "${BACKUP_REDIS%:*}" -p "${BACKUP_REDIS##*:}" ping >/dev/null 2>&1; then
      die "Redis answers on $BACKUP_REDIS: stop it before a restore (compose/jacker restore does)"
    fi
  fi
  for f in "$dir"/files/*.tar.gz; do
    [ -e "$f" ] || continue
    local fname found=""
    fname="$(basename "$f" .tar.gz)"
    for entry in $BACKUP_FILES; do
      files_fields "$entry"
      if [ "$f_name" = "$fname" ]; then found="$f_path"; fi
    done
    if [ -z "$found" ] || [ ! -d "$found" ] || [ ! -w "$found" ]; then
      die "files/$fname.tar.gz: no writable BACKUP_FILES directory named $fname to restore it into"
    fi
  done

  for f in "$dir"/postgres/*.dump; do
    [ -e "$f" ] || continue
    local pname
    pname="$(basename "$f" .dump)"
    for entry in $BACKUP_POSTGRES; do
      pg_fields "$entry"
      [ "$pg_name" = "$pname" ] || continue
      log "restore: $pg_db on $pg_host:$pg_port is dropped and recreated from postgres/$pname.dump"
      psql_as "$entry" postgres -c "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null
      use_pg "$entry"
      pg_restore -w -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres --create --exit-on-error "$f" \
        || die "pg_restore of postgres/$pname.dump failed: $pg_db may be incomplete; restore again"
    done
  done

  if [ -f "$dir/redis/dump.rdb" ]; then
    # Redis with appendonly loads its AOF, not dump.rdb: the snapshot becomes the AOF's base as
    # well, so that it loads whatever the configuration.
    local r="$BACKUP_REDIS_DATA_DIR"
    rm -rf "$r/appendonlydir" "$r/dump.rdb"
    mkdir -p "$r/appendonlydir"
    cp "$dir/redis/dump.rdb" "$r/dump.rdb"
    cp "$dir/redis/dump.rdb" "$r/appendonlydir/appendonly.aof.1.base.rdb"
    printf 'file appendonly.aof.1.base.rdb seq 1 type b\n' >"$r/appendonlydir/appendonly.aof.manifest"
    if [ "$(id -u)" = 0 ]; then chown -R --reference="$r" "$r/dump.rdb" "$r/appendonlydir"; fi
    log "restore: Redis's data files in $r replaced"
  fi

  for f in "$dir"/files/*.tar.gz; do
    [ -e "$f" ] || continue
    local fname
    fname="$(basename "$f" .tar.gz)"
    for entry in $BACKUP_FILES; do
      files_fields "$entry"
      [ "$f_name" = "$fname" ] || continue
      find "$f_path" -mindepth 1 -delete
      tar --numeric-owner -C "$f_path" -xzpf "$f"
      log "restore: $f_path replaced from files/$fname.tar.gz"
    done
  done
  log "restore of $(basename "$dir") done: start the stack"
}

# --- the service ----------------------------------------------------------------------------

do_loop() {
  local interval newest created wait_s
  interval="$(seconds "$BACKUP_INTERVAL")"
  log "scheduled every $BACKUP_INTERVAL into $BACKUP_DIR (keep $BACKUP_KEEP_LAST, and dailies for $BACKUP_KEEP_DAILY_DAYS days)"
  while true; do
    newest="$(backups | tail -n 1)"
    created=0
    if [ -n "$newest" ]; then created="$(created_of "$BACKUP_DIR/$newest")"; fi
    wait_s=$((${created:-0} + interval - $(date +%s)))
    if [ "$wait_s" -gt 0 ]; then
      sleep "$wait_s"
      continue
    fi
    # A failed backup is logged and tried again in 5 minutes; the healthcheck turns red once
    # the newest backup is too old.
    if (do_backup >/dev/null) && (do_prune); then :; else
      log "backup failed; trying again in 5 minutes"
      sleep 300
    fi
  done
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 64
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
check_settings
case "$cmd" in
  loop) do_loop ;;
  backup) do_backup && do_prune ;;
  list) do_list ;;
  verify) [ $# -eq 1 ] || usage; do_verify "$1" ;;
  restore) [ $# -eq 1 ] || usage; do_restore "$1" ;;
  prune) lock; do_prune ;;
  health) do_health ;;
  *) usage ;;
esac
