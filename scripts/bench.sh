#!/usr/bin/env bash
# `make bench`: every benchmark in one run, against DATABASE_URL or a throwaway local cluster
# with default durability settings (fsync on: commit costs are part of what is measured).
# Extra arguments go to the benchmark (e.g. `make bench ARGS="--seconds 5 appends"`).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench bench --no-run >&2
if [ -z "${DATABASE_URL:-}" ]; then
  port=56432
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  export PORTCULLIS_PG_DIR=${TMPDIR:-/tmp}/portcullis-bench-$$ PORTCULLIS_PG_PORT=$port PORTCULLIS_PG_DB=postgres
  trap 'scripts/pg-local.sh destroy' EXIT
  DATABASE_URL=$(scripts/pg-local.sh start)
  export DATABASE_URL
fi
echo "# Portcullis benchmarks ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ))"
cargo bench -q --bench bench -- "$@"
