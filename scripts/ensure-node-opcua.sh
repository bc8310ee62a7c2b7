#!/usr/bin/env bash
# Install node-opcua (the version pinned in tests/interop/package-lock.json) into
# tests/interop/node_modules for the OPC UA interop test (tests/test_opcua_interop.py).
#
# Idempotent: does nothing when node_modules already matches the lock file. Without Node.js
# and npm it says so and exits 0: the interop test then skips with that reason. A failed
# install exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-node-opcua: installing Debian's nodejs and npm"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null \
            && apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends nodejs npm >/dev/null \
            || echo "ensure-node-opcua: apt-get install nodejs npm failed"
    fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure-node-opcua: node/npm not found and not installable here (needs root and apt-get);" \
         "the OPC UA interop test will be skipped: install nodejs and npm, then run 'make services'"
    exit 0
fi

stamp=node_modules/.heat-gateway-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" && [ -d node_modules/node-opcua ]; then
    exit 0
fi
echo "ensure-node-opcua: installing node-opcua into tests/interop/node_modules"
# npm ci installs exactly the lock file; no audit or funding chatter, no update notices.
npm ci --no-audit --no-fund --loglevel=error --no-update-notifier
cp package-lock.json "$stamp"
