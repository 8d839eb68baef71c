#!/bin/sh
# Runs once, when PostgreSQL initialises an empty data directory (docker-entrypoint-initdb.d):
# creates the `postgres_exporter` role with only the built-in `pg_monitor` privileges.
#
# It runs as the `postgres` user (UID 70), so the exporter's password secret is owned by UID 70;
# the postgres-exporter container runs as that same UID to read it (see monitoring.yml).
set -eu
password_file="${POSTGRES_EXPORTER_PASSWORD_FILE:-/run/secrets/postgres_exporter_password}"
password="$(tr -d '\r\n' < "$password_file")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v exporter_password="$password" <<'SQL'
CREATE ROLE postgres_exporter WITH LOGIN PASSWORD :'exporter_password';
GRANT pg_monitor TO postgres_exporter;
SQL
