#!/bin/sh
# Turns the Redis password secrets into an ACL file, then runs the given command (in the
# container: the image's docker-entrypoint.sh, which drops to the `redis` user).
#
# The ACL file holds SHA-256 hashes (`#<hex>`), never the passwords, and lives on a tmpfs: it is
# rebuilt from the secrets at every start, so rotating a password is "edit the secret, restart".
# Paths can be overridden for tests: REDIS_SECRETS_DIR, REDIS_ACL_TEMPLATE, REDIS_ACL_FILE.
set -eu

secrets="${REDIS_SECRETS_DIR:-/run/secrets}"
template="${REDIS_ACL_TEMPLATE:-/usr/local/etc/redis/users.acl.template}"
out="${REDIS_ACL_FILE:-/run/redis/users.acl}"

hash_of() {
  f="$secrets/$1"
  if [ ! -s "$f" ]; then
    echo "redis start: secret $f is missing or empty (run compose/secrets.sh)" >&2
    exit 1
  fi
  # Secret files hold the password without a newline; strip one anyway if an editor added it.
  tr -d '\r\n' < "$f" | sha256sum | cut -d ' ' -f 1
}

admin="$(hash_of redis_admin_password)"
gate="$(hash_of redis_gate_password)"
exporter="$(hash_of redis_exporter_password)"
authentik="$(hash_of redis_authentik_password)"
backup="$(hash_of redis_backup_password)"

umask 077
mkdir -p "$(dirname "$out")"
# Redis's ACL file has no comments: keep only the `user` lines of the (commented) template.
grep -E '^[[:space:]]*user[[:space:]]' "$template" \
  | sed -e "s/@ADMIN_HASH@/$admin/" \
        -e "s/@GATE_HASH@/$gate/" \
        -e "s/@EXPORTER_HASH@/$exporter/" \
        -e "s/@AUTHENTIK_HASH@/$authentik/" \
        -e "s/@BACKUP_HASH@/$backup/" > "$out.tmp"
if grep -q '@[A-Z_]*_HASH@' "$out.tmp"; then
  echo "redis start: $template has a placeholder this script does not fill" >&2
  exit 1
fi
mv "$out.tmp" "$out"
# Redis runs as `redis` after the entrypoint drops root; outside the image that user may not exist.
if id redis >/dev/null 2>&1; then
  chown redis "$out" "$(dirname "$out")"
fi

exec "$@"
