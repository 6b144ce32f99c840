#!/usr/bin/env bash
# Installs the Debian 12 packages meterd builds, runs and tests with. Idempotent; needs root (or sudo).
set -euo pipefail

packages=(
    pkg-config
    libsqlite3-dev   # SQLite, linked through pkg-config
    libsystemd-dev   # sd_notify, socket activation, journald
    sqlite3          # the CLI, for operators and scripts (and the systemd end-to-end test's writer stall)
    prometheus       # promtool, which checks /metrics in the tests
    libjs-chart.js   # Chart.js, which the dashboard serves (without it the dashboard shows tables)
    faketime         # libfaketime: OneAnswerTests runs meterd and meterctl with their clocks across a month boundary
    openssl          # the CLI: scripts/make-certs.sh, which the TLS tests and the demo use for throw-away certificates
    systemd-container  # systemd-nspawn: scripts/e2e-systemd.sh boots Deploy/ under real systemd in a container
    procps           # pgrep, which scripts/e2e-systemd.sh finds the container's systemd with
    postgresql-15    # the second store (--store postgresql://...): scripts/postgres-test-server.sh runs a throw-away cluster for the tests;
                     # its client postgresql-client-15 has pg_dump, which `meterctl backup` runs on a PostgreSQL store
)
# node checks the dashboard's JavaScript (scripts/test.sh); a node from elsewhere (NodeSource, nvm) will do.
command -v node >/dev/null || packages+=(nodejs)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing Debian packages: ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
