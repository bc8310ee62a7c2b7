#!/usr/bin/env bash
# Make sure the Debian packages the tests, the benchmarks and the demo need are installed:
#   mosquitto         the MQTT broker (tests start private instances: tests/services.py)
#   victoria-metrics  the time-series server that takes InfluxDB line protocol
#   mbpoll            an independent Modbus client, for interop tests
#   libmodbus-dev     libmodbus, for an independent C Modbus server in interop tests
#   gcc, pkg-config   to build that C server (tests/interop/modbus_server.c)
#
# Usage: scripts/ensure-services.sh [--optional]
#   --optional  never fail: print what is missing and exit 0 (used by `make demo`)
#
# Quick and silent when everything is installed. Installs with apt-get when run as root.
# It starts no system service: the tests run their own private instances. (Debian's postinst
# may start mosquitto/victoria-metrics on install; nothing here relies on that.)
set -euo pipefail

PACKAGES=(mosquitto victoria-metrics mbpoll libmodbus-dev gcc pkg-config)
# Executables checked after install; mosquitto lives in /usr/sbin.
BINARIES=(mosquitto victoria-metrics mbpoll gcc pkg-config)
export PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"

optional=0
case "${1:-}" in
  "") ;;
  --optional) optional=1 ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "ensure-services: unknown argument '$1' (use --optional or --help)" >&2; exit 2 ;;
esac

# Print a problem; exit 1, or 0 with --optional.
give_up() {
  echo "ensure-services: $*" >&2
  if (( optional )); then
    echo "ensure-services: continuing without them (--optional)" >&2
    exit 0
  fi
  exit 1
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing_packages() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || echo "$pkg"
  done
}

missing_binaries() {
  local bin
  for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || echo "$bin"
  done
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  # Not Debian: accept binaries installed some other way.
  mapfile -t absent < <(missing_binaries)
  (( ${#absent[@]} == 0 )) && exit 0
  give_up "not a Debian system and not found on PATH: ${absent[*]}." \
    "Install them by hand, or point HEAT_GATEWAY_MOSQUITTO / HEAT_GATEWAY_VICTORIA_METRICS" \
    "at the binaries."
fi

mapfile -t missing < <(missing_packages)
(( ${#missing[@]} == 0 )) && exit 0

echo "ensure-services: missing Debian packages: ${missing[*]}"
if (( EUID != 0 )); then
  give_up "installing needs root: run 'sudo bash scripts/ensure-services.sh'" \
    "(or: sudo apt-get install --no-install-recommends ${missing[*]})"
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt run (unattended-upgrades, a parallel install) may hold the lock: wait for it.
apt_get=(apt-get -q -o DPkg::Lock::Timeout=600)
"${apt_get[@]}" update || give_up "apt-get update failed"
"${apt_get[@]}" install -y --no-install-recommends "${missing[@]}" \
  || give_up "apt-get install ${missing[*]} failed"

mapfile -t still_missing < <(missing_packages)
mapfile -t absent < <(missing_binaries)
if (( ${#still_missing[@]} + ${#absent[@]} > 0 )); then
  give_up "still missing after install: packages '${still_missing[*]}', binaries '${absent[*]}'"
fi
echo "ensure-services: installed ${missing[*]}"
