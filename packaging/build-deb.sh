#!/usr/bin/env bash
# Builds the Debian package: packaging/build-deb.sh [OUTDIR]
#
# Installs the build dependencies with apt-get if any is missing (needs root), copies the
# project's files (those git tracks or would track: no .venv, .git or caches) to a temporary
# directory, puts packaging/debian there as debian/, runs `dpkg-buildpackage -us -uc -b`, and
# copies the .deb to OUTDIR (default: dist/ in the project). Prints the .deb's path on stdout;
# the build's own output goes to stderr. Nothing is left behind in the project but OUTDIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
outdir=${1:-$root/dist}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# Build with Debian's own Python and tools, never a virtualenv's.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PYTHONSTARTUP PIP_REQUIRE_VIRTUALENV
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

apt_updated=
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "build-deb.sh: missing build dependencies, and not root to install them" >&2
        exit 1
    fi
    [[ -n $apt_updated ]] || { apt-get update -q >&2; apt_updated=1; }
    apt-get install -y -q --no-install-recommends "$@" >&2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/distsvc-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT

version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)
tree=$work/distsvc-${version:-0}
mkdir -p "$tree"

# The project's files: tracked or untracked-but-not-ignored (a file git ignores, like .venv/,
# build/ or dist/, is not part of the source), less any deleted from the work tree.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -f $f || -L $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$tree"
else
    tar -C "$root" --exclude=.git --exclude=.venv --exclude=dist --exclude=build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.mypy_cache --exclude=.ruff_cache -cf - . | tar -xf - -C "$tree"
fi
rm -rf "$tree/debian"
cp -a "$root/packaging/debian" "$tree/debian"

command -v dpkg-checkbuilddeps >/dev/null || apt_install dpkg-dev
if ! (cd "$tree" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
    [[ -n $apt_updated ]] || { apt-get update -q >&2; apt_updated=1; }
    (cd "$tree" && apt-get build-dep -y -q --no-install-recommends ./) >&2
    (cd "$tree" && dpkg-checkbuilddeps) >&2
fi

(cd "$tree" && dpkg-buildpackage -us -uc -b) >&2

shopt -s nullglob
debs=("$work"/*.deb)
if [[ ${#debs[@]} -eq 0 ]]; then
    echo "build-deb.sh: dpkg-buildpackage made no .deb" >&2
    exit 1
fi
for deb in "${debs[@]}"; do
    cp "$deb" "$outdir/"
    echo "$outdir/$(basename "$deb")"
done
