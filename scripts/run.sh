#!/usr/bin/env bash
# `make run`: the service on an embedded default. Without DATABASE_URL it creates (the first
# time) and starts a local cluster under the project folder (.pgdata, kept between runs) and
# stops it again when the service stops (Ctrl-C). Extra arguments go to `portcullis serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PORTCULLIS_PROFILE:-debug}
if [ "$profile" = release ]; then cargo build --release --bin portcullis; else cargo build --bin portcullis; fi
bin=${CARGO_TARGET_DIR:-target}/$profile/portcullis

if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$(scripts/pg-local.sh start)
  export DATABASE_URL
  trap 'scripts/pg-local.sh stop' EXIT
  echo "make run: local PostgreSQL at $DATABASE_URL (data in .pgdata; 'scripts/pg-local.sh destroy' removes it)" >&2
fi

"$bin" migrate

# A development admin token, made once and kept in .dev/ (git-ignored), unless you set one.
if [ -z "${PORTCULLIS_ADMIN_TOKEN:-}" ]; then
  mkdir -p .dev
  [ -s .dev/admin-token ] || (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >.dev/admin-token)
  PORTCULLIS_ADMIN_TOKEN=$(cat .dev/admin-token)
  export PORTCULLIS_ADMIN_TOKEN
  echo "make run: admin token in .dev/admin-token; try:" >&2
  echo "  curl -H \"Authorization: Bearer \$(cat .dev/admin-token)\" http://${PORTCULLIS_LISTEN:-127.0.0.1:8080}/api/v1/admin/projections/health" >&2
fi
listen=${PORTCULLIS_LISTEN:-127.0.0.1:8080}

# A default organization and a SCIM token for it, made once per database and kept in .dev/.
mkdir -p .dev
org=$(cat .dev/org-id 2>/dev/null || true)
if [ -z "$org" ] || ! "$bin" orgs list | grep -q "^$org "; then
  org=$("$bin" orgs create --no-wait "Default organization")
  (umask 077 && "$bin" tokens create --no-wait --org "$org" --scope scim --name "make run" 2>/dev/null >.dev/scim-token)
  echo "$org" >.dev/org-id
fi
echo "make run: SCIM base URL http://$listen/scim/v2/$org" >&2
echo "make run: dev SCIM token (also in .dev/scim-token): $(cat .dev/scim-token)" >&2
echo "  curl -H \"Authorization: Bearer \$(cat .dev/scim-token)\" http://$listen/scim/v2/$org/Users" >&2
echo "make run: serving on http://$listen (Ctrl-C stops the service and the local cluster)" >&2
"$bin" serve "$@"
