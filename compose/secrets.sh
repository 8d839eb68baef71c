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
# It also makes the internal TLS of the forwardAuth hop (Traefik calls jacker-gate over HTTP/2 with
# mutual TLS): a private CA (jacker_ca_key, which is mounted nowhere, and jacker_ca_cert), the
# gate's certificate for the name `jacker-gate`, and client certificates for Traefik and
# Prometheus. ECDSA P-256; the CA lasts 10 years and the others 2 years. A certificate is issued
# again when it is missing, no longer matches its key or the CA, lacks one of the gate's names, or
# expires within 30 days, so running this script from a monthly cron job keeps them fresh; after a
# renewal, `docker compose restart traefik prometheus` (the gate reloads its own certificate within
# 10 s). Needs `openssl`.
#   GATE_TLS_NAMES="jacker-gate ..."  the gate certificate's names: DNS names or IP addresses
#                                     (default `jacker-gate`, the service name Traefik dials)
#
# Compose mounts file secrets with their host owner and mode, so a container that does not run as
# root can read a 600 file only if it owns it. Run as root, this script gives each file to the UID
# of the container that reads it (the tables below); otherwise it prints the chown commands.
# Certificates are public: they are mode 644, keys 600.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/secrets}"

# name:owner-uid:kind  (kind: hex = 32 random bytes as hex, cookie, oauth, slack, map)
secrets=(
  "gate_cookie_secret:65532:cookie"           # jacker-gate (distroless nonroot)
  "oauth_client_secret:65532:oauth"           # jacker-gate
  "crowdsec_bouncer_key:65532:hex"            # jacker-gate; CrowdSec reads it as root
  "crowdsec_bouncer_key_2:65532:hex"          # jacker-gate-2 (replicas.yml); CrowdSec as root
  "crowdsec_bouncer_key_3:65532:hex"          # jacker-gate-3 (replicas.yml); CrowdSec as root
  "redis_gate_password:65532:hex"             # jacker-gate; Redis's start.sh reads it as root
  "redis_admin_password:1000:hex"             # Redis Commander (UID 1000); Redis healthcheck as root
  "redis_exporter_password:0:hex"             # Redis's start.sh (root)
  "redis_exporter_password_map:59000:map"     # redis_exporter (UID 59000), JSON built from the above
  "redis_authentik_password:1000:hex"         # Authentik (UID 1000)
  "redis_backup_password:10050:hex"           # the backup service (UID 10050); Redis's start.sh as root
  "postgres_password:0:hex"                   # PostgreSQL's entrypoint (root)
  "postgres_exporter_password:70:hex"         # PostgreSQL init script and postgres-exporter (UID 70)
  "authentik_postgres_password:1000:hex"      # Authentik; its PostgreSQL reads it as root
  "authentik_secret_key:1000:hex"             # Authentik
  "grafana_admin_password:472:hex"            # Grafana (UID 472)
  "alertmanager_slack_webhook:65534:slack"    # Alertmanager x2 (nobody)
)

# The forwardAuth hop's TLS. name:owner-uid:kind  (kind: ca-key, ca, key, server, client; a
# certificate follows its key)
pki=(
  "jacker_ca_key:0:ca-key"                    # signs the certificates below; mounted nowhere
  "jacker_ca_cert:0:ca"                       # public: jacker-gate, Traefik, Prometheus, Blackbox trust it
  "gate_tls_key:65532:key"                    # jacker-gate's listener
  "gate_tls_cert:65532:server"
  "traefik_gate_key:0:key"                    # Traefik's client certificate to the gate (root)
  "traefik_gate_cert:0:client"
  "prometheus_gate_key:65534:key"             # Prometheus scraping the gate's /metrics (nobody)
  "prometheus_gate_cert:65534:client"
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

# --- The forwardAuth hop's TLS ------------------------------------------------------------------

command -v openssl >/dev/null 2>&1 || {
  echo "secrets.sh: openssl not found; install it (apt-get install openssl) and run again" >&2
  exit 1
}
read -r -a gate_names <<<"${GATE_TLS_NAMES:-jacker-gate}"
[ "${#gate_names[@]}" -gt 0 ] || { echo "secrets.sh: GATE_TLS_NAMES is empty" >&2; exit 1; }
for n in "${gate_names[@]}"; do
  # A DNS name (letters, digits, '-', '.'), an IPv4 or an IPv6 address; nothing openssl would
  # read as more than one name.
  if ! [[ "$n" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ || "$n" =~ ^[0-9A-Fa-f:.]+$ ]]; then
    echo "secrets.sh: GATE_TLS_NAMES: \"$n\" is neither a DNS name nor an IP address" >&2
    exit 1
  fi
done
renew_before=$((30 * 24 * 3600))
ca_key="$dir/jacker_ca_key" ca_cert="$dir/jacker_ca_cert"

is_ip() { [[ "$1" =~ ^[0-9.]+$ || "$1" == *:* ]]; }

run_openssl() { # openssl with its error output shown only when it fails
  local err
  if ! err="$(openssl "$@" 2>&1 >/dev/null)"; then
    echo "secrets.sh: openssl $1 failed: $err" >&2
    exit 1
  fi
}

new_key() { # new_key FILE: an ECDSA P-256 private key, PKCS#8 PEM
  run_openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp"
  chmod 600 "$1.tmp"
  mv "$1.tmp" "$1"
}

# Whether CERT is usable: present, matching KEY, valid for 30 more days, and (with a CA) issued by it.
cert_ok() { # cert_ok CERT KEY [CA]
  local cert="$1" key="$2" ca="${3:-}"
  [ -s "$cert" ] && [ -s "$key" ] || return 1
  openssl x509 -in "$cert" -noout -checkend "$renew_before" >/dev/null 2>&1 || return 1
  [ "$(openssl x509 -in "$cert" -noout -pubkey 2>/dev/null)" = \
    "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
  [ -z "$ca" ] || openssl verify -CAfile "$ca" "$cert" >/dev/null 2>&1
}

has_names() { # has_names CERT NAME...: the certificate is for exactly these names
  local cert="$1" name sans
  shift
  # A name dropped from GATE_TLS_NAMES must stop being trusted: same count, each one present.
  sans="$(openssl x509 -in "$cert" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr ',' '\n' | grep -c ':')"
  [ "$sans" = "$#" ] || return 1
  for name in "$@"; do
    if is_ip "$name"; then
      openssl x509 -in "$cert" -noout -checkip "$name" 2>/dev/null | grep -q 'does match' || return 1
    else
      openssl x509 -in "$cert" -noout -checkhost "$name" 2>/dev/null | grep -q 'does match' || return 1
    fi
  done
}

issue() { # issue CERT KEY CN server|client: a certificate for KEY signed by the CA
  local cert="$1" key="$2" cn="$3" role="$4" ext="$dir/.ext.tmp" n san=""
  if [ "$role" = server ]; then
    for n in "${gate_names[@]}"; do
      if is_ip "$n"; then san+="${san:+,}IP:$n"; else san+="${san:+,}DNS:$n"; fi
    done
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' > "$ext"
  fi
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >> "$ext"
  run_openssl req -new -key "$key" -subj "/CN=$cn" -out "$dir/.csr.tmp"
  run_openssl x509 -req -in "$dir/.csr.tmp" -CA "$ca_cert" -CAkey "$ca_key" \
    -set_serial "0x$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
    -days 730 -sha256 -extfile "$ext" -out "$cert.tmp"
  rm -f "$ext" "$dir/.csr.tmp"
  chmod 644 "$cert.tmp"
  mv "$cert.tmp" "$cert"
}

renewed=()
if ! cert_ok "$ca_cert" "$ca_key"; then
  [ -s "$ca_key" ] || new_key "$ca_key"
  run_openssl req -x509 -new -key "$ca_key" -subj "/CN=Jacker internal CA" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$ca_cert.tmp"
  chmod 644 "$ca_cert.tmp"
  mv "$ca_cert.tmp" "$ca_cert"
  renewed+=(jacker_ca_cert)
fi
for entry in "${pki[@]}"; do
  IFS=: read -r name owner kind <<<"$entry"
  file="$dir/$name"
  case "$kind" in
    key) key="$file"; [ -s "$key" ] || new_key "$key" ;;
    server | client)
      if [ "$kind" = server ]; then cn="${gate_names[0]}"; else cn="${name%%_*}"; fi
      if ! cert_ok "$file" "$key" "$ca_cert" || { [ "$kind" = server ] && ! has_names "$file" "${gate_names[@]}"; }; then
        issue "$file" "$key" "$cn" "$kind"
        renewed+=("$name")
      fi ;;
  esac
  # Modes are repaired on every run, as for the other secrets: keys private, certificates public.
  case "$kind" in
    ca | server | client) chmod 644 "$file" ;;
    *) chmod 600 "$file" ;;
  esac
  if [ "$is_root" = 1 ]; then
    chown "$owner:$owner" "$file"
  elif [ "$(stat -c %u "$file")" != "$owner" ]; then
    chowns+=("chown $owner:$owner $file")
  fi
done

echo "secrets in $dir (700; files 600, certificates 644)"
if [ "${#renewed[@]}" -gt 0 ]; then echo "  certificates issued: ${renewed[*]}"; fi
if [ "${#created[@]}" -gt 0 ]; then echo "  created: ${created[*]}"; fi
if [ "${#placeholders[@]}" -gt 0 ]; then
  echo "  PLACEHOLDER values (edit the file, or re-run after deleting it):"
  printf '    %s\n' "${placeholders[@]}"
fi
if [ "${#chowns[@]}" -gt 0 ]; then
  echo "  not root: these files must belong to the UID of the container that reads them; run"
  printf '    sudo %s\n' "${chowns[@]}"
fi
