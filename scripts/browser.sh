#!/usr/bin/env bash
# Makes sure the headless browser the dashboard test drives is installed: Chromium and
# chromedriver from the distribution. Installs them when missing and running as root on
# Debian/Ubuntu; otherwise says exactly what to install.
set -euo pipefail
if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser: installing chromium and chromium-driver (the dashboard test drives them)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >&2 || {
    apt-get update -q >&2
    apt-get install -y -q chromium chromium-driver >&2
  }
  exit 0
fi
echo "browser: the dashboard test needs Chromium and chromedriver; install them, e.g." >&2
echo "  sudo apt-get install chromium chromium-driver" >&2
exit 1
