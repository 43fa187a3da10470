#!/usr/bin/env bash
# `make image`: a container image of the service, built locally (no registry is needed): the
# release binary on top of the Debian system that scripts/pg-image.sh makes (same release as
# this machine, so the binary's libraries match). The image runs `portcullis serve` on
# 0.0.0.0:8080; configure it with the environment variables of the README (DATABASE_URL, ...).
#
# usage: scripts/image.sh [IMAGE]      (default: $PORTCULLIS_IMAGE or portcullis:latest)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-${PORTCULLIS_IMAGE:-portcullis:latest}}
base=${PORTCULLIS_PG_IMAGE:-portcullis-postgres:15}

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "image: no Docker engine answers; nothing to build" >&2
  exit 1
fi
scripts/pg-image.sh "$base" >&2
cargo build --release --bin portcullis >&2

container=$(docker create --entrypoint /bin/true "$base")
trap 'docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
docker cp "${CARGO_TARGET_DIR:-target}/release/portcullis" "$container:/usr/local/bin/portcullis" >/dev/null
docker commit \
  --change 'ENTRYPOINT ["/usr/local/bin/portcullis"]' \
  --change 'CMD ["serve"]' \
  --change 'ENV PORTCULLIS_LISTEN=0.0.0.0:8080' \
  --change 'EXPOSE 8080' \
  --change 'USER nobody' \
  "$container" "$image" >/dev/null
echo "image: built $image" >&2
