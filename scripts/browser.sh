#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests if it is missing (Playwright cannot download
# its own browser here). Needs root or passwordless sudo; the tests skip loudly without it.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
echo "browser: installing Debian's chromium"
$SUDO apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
