#!/usr/bin/env bash
# Install the test identity provider (tests/oidc: panva's oidc-provider, pinned by its
# package-lock.json) for the single sign-on tests, the way scripts/browser.sh installs Chromium.
# Needs Node.js >= 18 and npm; does nothing when the pinned packages are already installed.
set -euo pipefail
cd "$(dirname "$0")/../tests/oidc"
if [ -d node_modules ] && cmp -s package-lock.json node_modules/.imdsweb-installed-lock; then exit 0; fi
if ! command -v npm >/dev/null; then
    echo "oidc: npm is missing: install Node.js >= 18 (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
echo "oidc: installing the test identity provider (npm ci)"
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json node_modules/.imdsweb-installed-lock
