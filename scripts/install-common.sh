# Sourced (never run) by the test command's install scripts: scripts/install-test-deps.sh,
# tests/support/install-login-peers.sh and compose/install-test-tools.sh. Defines functions only.
#
# Everything that does not come from Debian goes under $JG_CACHE, and the tools the tests look
# up by a fixed path are linked into $JG_CACHE/bin (tests/compose/, tests/support/login.rs).
# shellcheck shell=bash

JG_CACHE="${HOME:-/root}/.cache/jacker-gate"
JG_BIN="$JG_CACHE/bin"

# Prints those of the Debian packages named that are not installed.
jg_missing_debs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

jg_installed_debs() {
  dpkg-query -W -f='${Status} ${Package}\n' 2>/dev/null | awk '$3 == "installed" { print $4 }' | sort
}

# Installs the Debian packages named that are missing, starting no daemon: a policy-rc.d that
# forbids every start is in place for the install (with or without systemd; a host's own
# policy-rc.d is put back afterwards), and on a systemd host the units of every package this
# install brought in (dependencies too) are stopped and disabled, so nothing listens or starts at
# boot. The tests start their own peers on free ports. Packages that were there before are left
# alone.
jg_apt_install() {
  local missing
  mapfile -t missing < <(jg_missing_debs "$@")
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "installing Debian packages: ${missing[*]}" >&2

  local before policy=/usr/sbin/policy-rc.d saved rc=0 prev_trap
  before="$(jg_installed_debs)"
  prev_trap="$(trap -p EXIT)"
  saved="$(mktemp)"
  if [ -e "$policy" ]; then cp -p "$policy" "$saved"; else rm -f "$saved"; fi
  # shellcheck disable=SC2064 # expand now: the paths are local
  trap "jg_restore_policy '$policy' '$saved'" EXIT
  printf '#!/bin/sh\n# Installed for the duration of an apt-get run: start no service.\nexit 101\n' > "$policy"
  chmod 755 "$policy"

  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${JG_APT_UPDATED:-}" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq || rc=$?
    JG_APT_UPDATED=1
  fi
  [ "$rc" -ne 0 ] || apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" || rc=$?

  jg_restore_policy "$policy" "$saved"
  eval "${prev_trap:-trap - EXIT}"
  [ "$rc" -eq 0 ] || return "$rc"

  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    local new units=() p
    new="$(comm -13 <(echo "$before") <(jg_installed_debs))"
    for p in $new; do
      mapfile -t -O "${#units[@]}" units < <(dpkg-query -L "$p" 2>/dev/null |
        grep -E '^(/usr)?/lib/systemd/system/[^/@]+\.(service|socket|timer)$' | xargs -r -n1 basename)
    done
    if [ "${#units[@]}" -gt 0 ]; then
      echo "disabling the services apt just installed (the tests run their own): ${units[*]}" >&2
      systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
    fi
  fi
}

jg_restore_policy() {
  if [ -e "$2" ]; then mv -f "$2" "$1"; else rm -f "$1"; fi
}

# jg_venv DIR SPEC...: a fresh venv at DIR with the PyPI packages SPEC installed. Uses the first
# python3 on PATH; where that one cannot make a venv (Debian's own without python3-venv, or none
# at all), Debian's python3-venv and /usr/bin/python3. Never pip-installs outside a venv (PEP 668).
jg_venv() {
  local dir="$1"
  shift
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  if ! { command -v python3 >/dev/null 2>&1 && python3 -m venv "$dir" >/dev/null 2>&1; }; then
    rm -rf "$dir"
    jg_apt_install python3-venv
    /usr/bin/python3 -m venv "$dir"
  fi
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
}

# jg_link NAME TARGET: $JG_BIN/NAME points at TARGET.
jg_link() {
  mkdir -p "$JG_BIN"
  ln -sfn "$2" "$JG_BIN/$1"
}

# Prints the major version of the node at $1 (a path or a name on PATH), or nothing.
jg_node_major() {
  local v
  v="$("$1" --version 2>/dev/null)" || return 0
  v="${v#v}"
  echo "${v%%.*}"
}
