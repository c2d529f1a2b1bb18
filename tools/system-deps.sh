#!/usr/bin/env bash
# Installs the Debian packages the real-server tests need, when any is missing.
# As root it runs apt-get itself; otherwise through `sudo -n` (no password
# prompt). When neither works it prints the one command to run and fails, so
# `make test` never silently skips the integration tests for a missing server.
set -euo pipefail

packages=(redis-server redis-tools redis-sentinel mariadb-server mariadb-client nginx wrk prometheus openssl curl)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
((${#missing[@]})) || exit 0

install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "The real-server tests need these Debian packages: ${missing[*]}" >&2
    echo "Install them with this one command, then run make test again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" "${install[@]}" >/dev/null
