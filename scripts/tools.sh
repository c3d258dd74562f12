#!/usr/bin/env bash
# Install Debian's wrk for the load benchmark (bench/load_wrk.py) if it is missing, the same way
# scripts/browser.sh installs Chromium. Needs root or passwordless sudo; the benchmark says so
# and stops without it.
set -euo pipefail
if command -v wrk >/dev/null; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
echo "tools: installing Debian's wrk"
$SUDO apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
