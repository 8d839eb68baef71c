#!/usr/bin/env bash
# Creates the Docker secret files of the Jacker stack: a directory with mode 700 and one file
# per secret with mode 600, filled with fresh random values wherever a value can be generated.
#
#   compose/secrets.sh [DIR]          DIR defaults to compose/secrets
#
# Existing non-empty files are kept (PostgreSQL and Authentik remember the first password they
# saw); delete a file and run again to rotate it. Two values cannot be generated and are read
# from the environment, or asked for on a terminal:
#   OAUTH_CLIENT_SECRET             the Google OAuth client secret for jacker-gate
#   ALERTMANAGER_SLACK_WEBHOOK_URL  a Slack incoming-webhook URL for Alertmanager (optional)
# Without them a placeholder is written and compose/validate reports it.
#
# The cookie secret comes from `jacker-gate gen-secret` when the binary is found ($GATE_BIN,
# PATH, or target/{release,debug} of this repository), else from 32 random bytes in base64, the
# same format.
#
# Compose mounts file secrets with their host owner and mode, so a container that does not run as
# root can read a 600 file only if it owns it. Run as root, this script gives each file to the UID
# of the container that reads it (the table below); otherwise it prints the chown commands.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/secrets}"

# name:owner-uid:kind  (kind: hex = 32 random bytes as hex, cookie, oauth, slack, map)
secrets=(
  "gate_cookie_secret:65532:cookie"           # jacker-gate (distroless nonroot)
  "oauth_client_secret:65532:oauth"           # jacker-gate
  "crowdsec_bouncer_key:65532:hex"            # jacker-gate; CrowdSec reads it as root
  "redis_gate_password:65532:hex"             # jacker-gate; Redis's start.sh reads it as root
  "redis_admin_password:1000:hex"             # Redis Commander (UID 1000); Redis healthcheck as root
  "redis_exporter_password:0:hex"             # Redis's start.sh (root)
  "redis_exporter_password_map:59000:map"     # redis_exporter (UID 59000), JSON built from the above
  "redis_authentik_password:1000:hex"         # Authentik (UID 1000)
  "postgres_password:0:hex"                   # PostgreSQL's entrypoint (root)
  "postgres_exporter_password:70:hex"         # PostgreSQL init script and postgres-exporter (UID 70)
  "authentik_postgres_password:1000:hex"      # Authentik; its PostgreSQL reads it as root
  "authentik_secret_key:1000:hex"             # Authentik
  "grafana_admin_password:472:hex"            # Grafana (UID 472)
  "alertmanager_slack_webhook:65534:slack"    # Alertmanager x2 (nobody)
)

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

gate_bin() {
  local c
  for c in "${GATE_BIN:-}" "$(command -v jacker-gate 2>/dev/null || true)" \
           "$here/../target/release/jacker-gate" "$here/../target/debug/jacker-gate"; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

cookie_secret() {
  local bin
  if bin="$(gate_bin)"; then
    "$bin" gen-secret | tr -d '\r\n'
  else
    echo "secrets.sh: jacker-gate binary not found; cookie secret from /dev/urandom instead" >&2
    head -c 32 /dev/urandom | base64 | tr -d '\n'
  fi
}

ask() { # ask VAR "prompt": value from the environment, else the terminal, else empty
  local var="$1" prompt="$2" value="${!1:-}"
  if [ -z "$value" ] && [ -t 0 ]; then
    read -r -s -p "$prompt: " value
    echo >&2
  fi
  printf '%s' "$value"
}

umask 077
mkdir -p "$dir"
chmod 700 "$dir"

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
created=() placeholders=() chowns=()

for entry in "${secrets[@]}"; do
  IFS=: read -r name owner kind <<<"$entry"
  file="$dir/$name"
  if [ -s "$file" ] && [ "$kind" != map ]; then
    chmod 600 "$file"
  else
    case "$kind" in
      hex) value="$(random_hex)" ;;
      cookie) value="$(cookie_secret)" ;;
      oauth)
        value="$(ask OAUTH_CLIENT_SECRET "Google OAuth client secret for jacker-gate (empty: placeholder)")"
        if [ -z "$value" ]; then value="REPLACE_WITH_GOOGLE_CLIENT_SECRET"; placeholders+=("$name (set OAUTH_CLIENT_SECRET)"); fi ;;
      slack)
        value="$(ask ALERTMANAGER_SLACK_WEBHOOK_URL "Slack webhook URL for Alertmanager (empty: placeholder)")"
        if [ -z "$value" ]; then value="https://hooks.slack.com/services/REPLACE/WITH/WEBHOOK"; placeholders+=("$name (set ALERTMANAGER_SLACK_WEBHOOK_URL)"); fi ;;
      map)
        # redis_exporter reads passwords as a JSON map keyed by the Redis address (REDIS_ADDR).
        value="{\"redis://redis:6379\":\"$(tr -d '\r\n' < "$dir/redis_exporter_password")\"}" ;;
    esac
    [ -s "$file" ] || created+=("$name")
    # printf without a newline: the file holds exactly the value.
    printf '%s' "$value" > "$file.tmp"
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
  fi
  if [ "$is_root" = 1 ]; then
    chown "$owner:$owner" "$file"
  elif [ "$(stat -c %u "$file")" != "$owner" ]; then
    chowns+=("chown $owner:$owner $file")
  fi
done

echo "secrets in $dir (700; files 600)"
if [ "${#created[@]}" -gt 0 ]; then echo "  created: ${created[*]}"; fi
if [ "${#placeholders[@]}" -gt 0 ]; then
  echo "  PLACEHOLDER values (edit the file, or re-run after deleting it):"
  printf '    %s\n' "${placeholders[@]}"
fi
if [ "${#chowns[@]}" -gt 0 ]; then
  echo "  not root: these files must belong to the UID of the container that reads them; run"
  printf '    sudo %s\n' "${chowns[@]}"
fi
