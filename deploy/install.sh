#!/usr/bin/env bash
# Install or upgrade heat-gateway from a release tarball (`make dist`), with no network.
#
# Usage (as root, from the unpacked heat-gateway-VERSION/ folder):
#   ./install.sh [--prefix /opt/heat-gateway] [--etc /etc/heat-gateway] [--no-system]
#
#   --prefix DIR   where the code goes (default /opt/heat-gateway)
#   --etc DIR      where the site file and profiles go (default /etc/heat-gateway)
#   --no-system    no system user, no systemd units (for a trial install as any user)
#
# What it does:
#   1. Builds a virtualenv for this release at PREFIX/venv-VERSION from wheelhouse/ only
#      (pip --no-index: nothing is downloaded), then points PREFIX/.venv at it in one rename.
#      An upgrade therefore never leaves a half-installed venv, and the previous release's
#      venv stays beside it: `ln -sfn venv-OLD PREFIX/.venv` rolls back.
#   2. Copies README, docs, deploy/ and the example config to PREFIX.
#   3. ETC/site.yaml and ETC/profiles/*.yaml are written only when missing: an upgrade keeps
#      your configuration. A bundled profile that differs from yours is left beside it as
#      NAME.yaml.new for you to compare.
#   4. Unless --no-system: the heat-gateway system user, and the systemd units copied to
#      /etc/systemd/system (daemon-reload; nothing is enabled or restarted for you).
# State (the spool, trusted certificates in /var/lib/heat-gateway) is never touched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/heat-gateway
etc=/etc/heat-gateway
system=1
while (($#)); do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --etc) etc=$2; shift 2 ;;
        --no-system) system=0; shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "no $python: install Python 3.11 or newer (Debian 12: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than 3.11"
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "$python has no venv/ensurepip: apt-get install python3-venv"

wheel=$(find "$here/wheelhouse" -maxdepth 1 -name 'heat_gateway-*.whl' | head -n 1)
[ -n "$wheel" ] || die "no heat_gateway wheel in $here/wheelhouse: is this an unpacked release tarball?"
version=$(basename "$wheel" | cut -d- -f2)

if ((system)) && [ "$(id -u)" != 0 ]; then
    die "installing the system user and units needs root (or use --no-system)"
fi

# 1. The venv for this release, built beside the running one, then switched in one rename.
mkdir -p "$prefix"
venv=$prefix/venv-$version
if [ -e "$venv" ]; then
    say "reinstalling $version (removing the old $venv)"
    [ "$(readlink "$prefix/.venv" 2>/dev/null)" = "venv-$version" ] && rm -f "$prefix/.venv"
    rm -rf "$venv"
fi
"$python" -m venv "$venv"
PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet \
    --no-index --find-links "$here/wheelhouse" "heat-gateway==$version"
"$venv/bin/heat-gateway" --version >/dev/null || die "the new venv does not run: $venv/bin/heat-gateway --version"
if [ -d "$prefix/.venv" ] && [ ! -L "$prefix/.venv" ]; then
    # an install made by hand before install.sh existed: keep it, out of the way
    mv "$prefix/.venv" "$prefix/venv-previous"
fi
ln -sfn "venv-$version" "$prefix/.venv.tmp"
mv -T "$prefix/.venv.tmp" "$prefix/.venv"
say "heat-gateway $version in $venv, linked as $prefix/.venv"

# 2. Documentation, deploy files and the example configuration, for reference.
for item in README.md docs deploy config; do
    rm -rf "${prefix:?}/$item"
    cp -r "$here/$item" "$prefix/$item"
done

# 3. Configuration: written only when missing.
mkdir -p "$etc/profiles"
if [ -e "$etc/site.yaml" ]; then
    say "kept $etc/site.yaml"
else
    cp "$here/config/site.example.yaml" "$etc/site.yaml"
    say "wrote $etc/site.yaml from the example: edit it (devices, broker, secrets); it starts as the example does"
fi
for profile in "$here"/config/profiles/*.yaml; do
    name=$(basename "$profile")
    if [ ! -e "$etc/profiles/$name" ]; then
        cp "$profile" "$etc/profiles/$name"
    elif ! cmp -s "$profile" "$etc/profiles/$name"; then
        cp "$profile" "$etc/profiles/$name.new"
        say "kept your $etc/profiles/$name; this release's is beside it as $name.new"
    fi
done

# 4. System user and units.
if ((system)); then
    if ! id heat-gateway >/dev/null 2>&1; then
        adduser --system --group --no-create-home --home /var/lib/heat-gateway heat-gateway
    fi
    chgrp -R heat-gateway "$etc"
    chmod 0750 "$etc"
    chmod 0640 "$etc/site.yaml"
    if command -v systemctl >/dev/null 2>&1 && [ -d /etc/systemd/system ]; then
        cp "$here"/deploy/*.service /etc/systemd/system/
        systemctl daemon-reload 2>/dev/null || true
        say "units in /etc/systemd/system; after editing $etc/site.yaml:"
        say "  heat-gateway check -c $etc/site.yaml && systemctl enable --now heat-gateway heat-gateway-historian"
        say "  (an upgrade: systemctl restart heat-gateway heat-gateway-historian)"
    fi
fi
say "done: $prefix/.venv/bin/heat-gateway check -c $etc/site.yaml"
