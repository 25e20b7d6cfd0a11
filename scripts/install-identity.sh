#!/usr/bin/env bash
# Install the OIDC provider the identity browser tests start (tests/identity/idp): the npm
# package oauth2-mock-server, pinned by package.json and package-lock.json, into the git-ignored
# tests/identity/idp/node_modules. Needs Node and npm (Debian: apt-get install nodejs npm).
set -euo pipefail
cd "$(dirname "$0")/../tests/identity/idp"
if [ -f node_modules/oauth2-mock-server/package.json ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: the identity browser tests will be skipped (apt-get install npm)." >&2
    exit 0
fi
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
