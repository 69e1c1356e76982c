#!/usr/bin/env bash
# Installs what distsvc needs on Debian 12: the apt packages, then a virtual environment in
# .venv with distsvc in it.
#   scripts/setup.sh          what running distsvc needs
#   scripts/setup.sh --test   also what the tests need (OpenSSH server, systemd-nspawn, ...)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev openssh-client procps)
extras="systemd"
if [[ ${1:-} == --test ]]; then
    packages+=(openssh-server systemd systemd-container dbus dbus-user-session iproute2 passwd)
    # pip and pipx installations (tests/test_install_e2e.py): Debian 12's pipx 1.1.0.
    packages+=(pipx)
    # The VM bed (tests/vmbed.py; it fetches its kernel itself).
    packages+=(qemu-system-x86 busybox-static kmod)
    # The Debian package's checks (tests/test_packaging.py, test_deb_e2e.py): lintian on the
    # built .deb; man-db and bash-completion for `man distsvc-run` and completion in the container.
    packages+=(lintian man-db bash-completion)
    # Man pages and completion tests (tests/test_docs_gen.py, test_completion.py; with man-db
    # and bash-completion above).
    packages+=(groff-base zsh)
    # A single-node Slurm cluster in the booted container (tests/slurmbed.py): slurm-wlm 22.05
    # with munge, slurmdbd over MariaDB for accounting (sacct) and associations.
    packages+=(slurm-wlm slurm-client munge slurmdbd mariadb-server)
    extras="systemd,test"
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    # The tests start their own sshd; keep the package from starting one on port 22.
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null
    [[ -z $guard ]] || $sudo rm -f /usr/sbin/policy-rc.d
fi

# Debian's own interpreter: every user (and a container booted from this root) can run it.
[[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
# distsvc-run without `site`: ~2 ms of CPU less per command (see the script).
scripts/fast-launcher.sh .venv/bin/python .venv/bin/distsvc-run
