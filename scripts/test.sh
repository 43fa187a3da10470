#!/usr/bin/env bash
# `make test`: every test against real PostgreSQL, leaving nothing running afterwards.
#   DATABASE_URL set        -> that server (tests create and use databases of their own)
#   a Docker engine answers -> testcontainers, with postgres:15, or with the image that
#                              scripts/pg-image.sh builds when none can be pulled
#   otherwise               -> a throwaway local cluster (scripts/pg-local.sh), destroyed after
# Extra arguments go to `cargo test` (e.g. `make test ARGS=eventstore`).
set -euo pipefail
cd "$(dirname "$0")/.."

run_id="$$-$(date +%s)"
export PORTCULLIS_TEST_RUN=$run_id

scripts/browser.sh
scripts/promtool.sh
# The cluster test runs the service's image; built here, before the tests compete for the CPU.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  scripts/image.sh
else
  echo "make test: no Docker engine answers: the multi-node cluster test is SKIPPED" >&2
  export PORTCULLIS_SKIP_DOCKER_TESTS=1
fi

if [ -n "${DATABASE_URL:-}" ]; then
  echo "make test: using the server in DATABASE_URL" >&2
  exec cargo test "$@"
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  image=postgres:15
  if ! docker image inspect "$image" >/dev/null 2>&1 && ! docker pull -q "$image" >/dev/null 2>&1; then
    image=${PORTCULLIS_PG_IMAGE:-portcullis-postgres:15}
    echo "make test: $image (postgres:15 cannot be pulled here)" >&2
    scripts/pg-image.sh "$image" >&2 || image=""
  fi
  if [ -n "$image" ]; then
    # The harness removes its container when the test process exits; this catches the rest.
    trap 'docker ps -aq --filter "label=portcullis.test-run=$run_id" | xargs -r docker rm -f -v >/dev/null 2>&1 || true' EXIT
    PORTCULLIS_TEST_PG_IMAGE=$image cargo test "$@"
    exit
  fi
  echo "make test: no PostgreSQL image; falling back to a local cluster" >&2
fi

port=55432
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
export PORTCULLIS_PG_DIR=${TMPDIR:-/tmp}/portcullis-test-$run_id
export PORTCULLIS_PG_PORT=$port PORTCULLIS_PG_DB=postgres PORTCULLIS_PG_FAST=1
trap 'scripts/pg-local.sh destroy' EXIT
url=$(scripts/pg-local.sh start)
echo "make test: throwaway local cluster at $url" >&2
DATABASE_URL=$url cargo test "$@"
