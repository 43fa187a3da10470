#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster under the project folder, for `make run`, `make test`
# and `make bench` on machines without a server of their own.
#
# usage: scripts/pg-local.sh create|start|stop|crash|destroy|url|status
#   create   initdb into the cluster folder (once; kept between runs) and make the database
#   start    start the server (creating the cluster first when needed) and print DATABASE_URL
#   stop     stop the server (fast shutdown); the data stays
#   crash    stop the server as a crash would (immediate: no checkpoint, WAL not yet
#            written is lost); the data stays, and the next start recovers
#   destroy  stop the server and delete the cluster folder
#   url      print DATABASE_URL
#   status   say whether the server runs
# env:
#   PORTCULLIS_PG_DIR   cluster folder (default: <project>/.pgdata, git-ignored)
#   PORTCULLIS_PG_PORT  TCP port on 127.0.0.1 (default: 54329)
#   PORTCULLIS_PG_DB    database that `create` makes (default: portcullis)
#   PORTCULLIS_PG_FAST  1: fsync off and more connections (throwaway test clusters only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${PORTCULLIS_PG_DIR:-$here/.pgdata}
port=${PORTCULLIS_PG_PORT:-54329}
db=${PORTCULLIS_PG_DB:-portcullis}

say() { echo "pg-local: $*" >&2; }

find_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
    return 0
  fi
  return 1
}

bin=$(find_bin || true)
if [ -z "$bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "initdb/pg_ctl not found; installing the distribution's postgresql package"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(find_bin || true)
  fi
  if [ -z "$bin" ]; then
    say "PostgreSQL server binaries (initdb, pg_ctl) are missing."
    say "Install them: Debian/Ubuntu 'sudo apt-get install postgresql', Fedora 'sudo dnf install postgresql-server',"
    say "macOS 'brew install postgresql@15'; or set DATABASE_URL to a server of your own."
    exit 1
  fi
fi

# PostgreSQL refuses to run as root: as root, the cluster belongs to the 'postgres' user.
as_owner() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
  fi
  as_owner() { runuser -u postgres -- "$@"; }
  # The owner must reach the folder; a checkout under /root is out of its reach.
  parent=$(dirname "$dir")
  if ! runuser -u postgres -- test -x "$parent" 2>/dev/null || ! runuser -u postgres -- test -r "$parent"; then
    sum=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
    dir=${TMPDIR:-/tmp}/portcullis-pgdata-$sum
  fi
fi

url() { echo "postgres://postgres@127.0.0.1:$port/$db"; }

running() { [ -f "$dir/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; }

create() {
  if [ -s "$dir/PG_VERSION" ]; then
    return 0
  fi
  say "creating a cluster in $dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  chmod 700 "$dir"
  as_owner "$bin/initdb" -D "$dir" -U postgres -E UTF8 --locale=C.UTF-8 --auth=trust >"$dir.initdb.log" 2>&1 || {
    cat "$dir.initdb.log" >&2
    rm -f "$dir.initdb.log"
    exit 1
  }
  rm -f "$dir.initdb.log"
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "idle_in_transaction_session_timeout = '60s'"
    # Statement counts for `make bench` (loaded, not created: a database opts in).
    [ -f "$(dirname "$bin")/lib/pg_stat_statements.so" ] && echo "shared_preload_libraries = 'pg_stat_statements'"
    if [ "${PORTCULLIS_PG_FAST:-0}" = 1 ]; then
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
      echo "max_connections = 300"
    else
      echo "max_connections = 200"
    fi
  } | as_owner tee -a "$dir/postgresql.conf" >/dev/null
  start_server
  if [ "$db" != postgres ]; then
    psql=$bin/psql
    [ -x "$psql" ] || psql=$(command -v psql)
    as_owner "$psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
}

start_server() {
  if running; then
    return 0
  fi
  # setsid: Ctrl-C in the terminal reaches the service, which stops first; then we stop this.
  as_owner setsid "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -o "-p $port" start >/dev/null || {
    say "the server did not start; last lines of $dir/server.log:"
    tail -n 20 "$dir/server.log" >&2
    exit 1
  }
}

case "${1:-}" in
  create) create ;;
  start)
    create
    start_server
    url
    ;;
  stop)
    if running; then
      as_owner "$bin/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null
      say "stopped"
    fi
    ;;
  crash)
    if running; then
      as_owner "$bin/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null
      say "crashed (immediate shutdown)"
    fi
    ;;
  destroy)
    if running; then
      as_owner "$bin/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  url) url ;;
  status)
    if running; then echo "running on port $port ($dir)"; else echo "stopped ($dir)"; exit 3; fi
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
