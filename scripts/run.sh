#!/usr/bin/env bash
# `make run`: the service on an embedded default. Without DATABASE_URL it creates (the first
# time) and starts a local cluster under the project folder (.pgdata, kept between runs) and
# stops it again when the service stops (Ctrl-C). Extra arguments go to `portcullis serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PORTCULLIS_PROFILE:-debug}
if [ "$profile" = release ]; then cargo build --release --bin portcullis; else cargo build --bin portcullis; fi
bin=target/$profile/portcullis

if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$(scripts/pg-local.sh start)
  export DATABASE_URL
  trap 'scripts/pg-local.sh stop' EXIT
  echo "make run: local PostgreSQL at $DATABASE_URL (data in .pgdata; 'scripts/pg-local.sh destroy' removes it)" >&2
fi

"$bin" migrate
listen=${PORTCULLIS_LISTEN:-127.0.0.1:8080}
echo "make run: serving on http://$listen (Ctrl-C stops the service and the local cluster)" >&2
"$bin" serve "$@"
