#!/usr/bin/env bash
# Build the release artifact: dist/heat-gateway-VERSION.tar.gz, which installs offline.
#
#   heat-gateway-VERSION/
#     install.sh        installs or upgrades from the wheelhouse, no network (deploy/install.sh)
#     wheelhouse/       the heat-gateway wheel and a wheel of every dependency, for this
#                       platform and Python (build on the same Debian/arch as the site box)
#     config/ deploy/ docs/ README.md
#
# Usage: scripts/make-dist.sh [OUT_DIR]   (default: dist)
# Uses .venv's pip (make venv). Needs the package index once, to fetch the dependency wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
python=${PYTHON_FOR_DIST:-.venv/bin/python}
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
name=heat-gateway-$version
stage=$out/$name

rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage/wheelhouse"
# The project's wheel and every dependency's, resolved as `pip install` would; a dependency
# that ships no wheel for this platform is built into one here, so the site box needs no compiler.
"$python" -m pip wheel --quiet --wheel-dir "$stage/wheelhouse" . 2> >(grep -v -e 'Warning' -e '!!' -e '^\s*$' -e '\*\*\*' >&2 || true)
rm -rf build
cp -r config deploy docs README.md "$stage/"
cp deploy/install.sh "$stage/install.sh"
chmod +x "$stage/install.sh"
tar -czf "$out/$name.tar.gz" -C "$out" "$name"
rm -rf "$stage"
wheels=$(tar -tzf "$out/$name.tar.gz" | grep -c '\.whl$')
echo "$out/$name.tar.gz ($wheels wheels, $(du -h "$out/$name.tar.gz" | cut -f1))"
