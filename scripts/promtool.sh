#!/usr/bin/env bash
# Makes sure promtool (from the distribution's prometheus package) is installed: the alerting
# rules test runs it. Installs it when missing and running as root on Debian/Ubuntu; otherwise
# says exactly what to install.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "promtool: installing prometheus (the alerting rules test runs promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The package's service is not wanted here; policy-rc.d keeps it from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -q --no-install-recommends prometheus >&2 || {
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends prometheus >&2
  }
  exit 0
fi
echo "promtool: the alerting rules test needs promtool; install it, e.g." >&2
echo "  sudo apt-get install prometheus" >&2
exit 1
