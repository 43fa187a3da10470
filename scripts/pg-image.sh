#!/usr/bin/env bash
# Builds a PostgreSQL image for Docker from Debian packages, for machines whose Docker engine
# cannot pull one (no registry): debootstrap a minimal system with postgresql, then
# `docker import` it with an entrypoint that initialises and starts the server.
# Skipped when the image already exists.
#
# usage: scripts/pg-image.sh [IMAGE]      (default: $PORTCULLIS_PG_IMAGE or portcullis-postgres:15)
# env:   DEBIAN_MIRROR (default: the first Debian mirror in /etc/apt, else deb.debian.org)
#        DEBIAN_SUITE  (default: this machine's release codename, else bookworm)
set -euo pipefail

image=${1:-${PORTCULLIS_PG_IMAGE:-portcullis-postgres:15}}

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "pg-image: no Docker engine answers; nothing to build" >&2
  exit 1
fi
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "pg-image: $image exists; skipped"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "pg-image: installing debootstrap" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "pg-image: debootstrap is missing; install it (Debian/Ubuntu: sudo apt-get install debootstrap)" >&2
    exit 1
  fi
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
suite=${DEBIAN_SUITE:-}
if [ -z "$suite" ]; then
  suite=$( (. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}") )
  suite=${suite:-bookworm}
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-pg-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

echo "pg-image: debootstrap $suite from $mirror (about a minute)" >&2
debootstrap --variant=minbase --include=postgresql "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  echo "pg-image: debootstrap failed; last lines of its log:" >&2
  tail -n 20 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  exit 1
}
rm -f "$rootfs.log"

# The packaged cluster is not used: the entrypoint makes its own in $PGDATA.
rm -rf "$rootfs"/var/lib/postgresql/*/main "$rootfs"/etc/postgresql/*/main
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/cache/apt/* \
  "$rootfs"/var/lib/apt/lists/*

cat >"$rootfs/usr/local/bin/portcullis-pg-entrypoint" <<'SH'
#!/bin/sh
# Initialises $PGDATA on first start, then runs the server in the foreground.
# Extra arguments go to postgres (for example: -c fsync=off; a leading `postgres` is dropped).
# POSTGRES_PASSWORD set: password (scram) for TCP connections; unset: trust (throwaway use only).
set -e
# Accept the official image's calling convention too: `postgres -c ...`.
[ "${1:-}" = postgres ] && shift
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  runuser -u postgres -- "$bin/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=trust >/dev/null
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    runuser -u postgres -- "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null <<SQL
ALTER USER postgres PASSWORD '$POSTGRES_PASSWORD';
SQL
  else
    echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
  fi
fi
mkdir -p /var/run/postgresql
chown postgres:postgres /var/run/postgresql
exec runuser -u postgres -- "$bin/postgres" -D "$PGDATA" "$@"
SH
chmod 755 "$rootfs/usr/local/bin/portcullis-pg-entrypoint"

tar -C "$rootfs" -c . | docker import \
  -c 'ENTRYPOINT ["/usr/local/bin/portcullis-pg-entrypoint"]' \
  -c 'ENV PGDATA=/var/lib/postgresql/data' \
  -c 'EXPOSE 5432' \
  -m "PostgreSQL from Debian $suite packages, built by portcullis scripts/pg-image.sh" \
  - "$image" >/dev/null
echo "pg-image: built $image"
