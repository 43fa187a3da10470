#!/usr/bin/env bash
# Makes sure the public SCIM conformance suite (scim2-tester, from PyPI) is installed in a
# virtualenv of the project's own, and prints that virtualenv's python. Idempotent: a second
# run only checks the pinned version. The test in tests/it/scim/conformance.rs calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.5.2
venv=${PORTCULLIS_SCIM_TESTER_VENV:-target/scim2-tester-venv}
py="$venv/bin/python"
if [ -x "$py" ] && "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('scim2-tester') != '$version')" 2>/dev/null; then
  echo "$(cd "$venv" && pwd)/bin/python"
  exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "scim-tester: python3 is needed to run scim2-tester; install it (e.g. apt-get install python3 python3-venv)" >&2
  exit 1
fi
echo "scim-tester: installing scim2-tester $version into $venv" >&2
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv" >&2
"$py" -m pip install -q --disable-pip-version-check "scim2-tester[httpx2]==$version" >&2
echo "$(cd "$venv" && pwd)/bin/python"
