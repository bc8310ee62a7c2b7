#!/usr/bin/env bash
# Install Node-RED and node-red-contrib-modbus (the versions pinned in bench/nodered/package-lock.json)
# into bench/nodered/node_modules, for the Node-RED rows of the speed cases of `make bench`
# (bench/README.md). Not part of `make test` or `make services`: only the benchmark uses it.
#
# Idempotent: does nothing when node_modules already matches the lock file. Without Node.js and
# npm it says so and exits 1. node-red-contrib-modbus is pinned at 5.23.3: later 5.x releases
# fetch a dependency from dl.cloudsmith.io instead of the npm registry.
set -euo pipefail
cd "$(dirname "$0")/../bench/nodered"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure-node-red: node and npm are needed (apt-get install nodejs npm; Node.js 18 or later)" >&2
    exit 1
fi
stamp=node_modules/.heat-gateway-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" && [ -f node_modules/node-red/red.js ]; then
    exit 0
fi
echo "ensure-node-red: installing Node-RED into bench/nodered/node_modules (about 140 MB)"
npm ci --no-audit --no-fund --loglevel=error --no-update-notifier
cp package-lock.json "$stamp"
