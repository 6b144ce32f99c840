#!/bin/sh
# Installs meterd under systemd: builds release binaries with the Swift standard library linked
# statically (the hardened unit cannot see a toolchain), installs them, the units, the service
# user and an example config, then enables and starts meterd.socket and meterd.service.
#
#   sudo Deploy/install.sh                     # build in this checkout, install, enable, start
#   sudo Deploy/install.sh --binaries DIR      # install meterd and meterctl already built in DIR
#   options: --prefix DIR (default /usr/local), --scratch-path DIR (swift build's), --no-start
#
# Needs: Swift (to build), libsqlite3 and libsystemd at run time (Debian: libsqlite3-0, libsystemd0).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
binaries=
scratch=
start=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --binaries) binaries=$2; shift 2 ;;
        --scratch-path) scratch=$2; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

if [ -z "$binaries" ]; then
    cd "$here/.."
    set -- -c release --static-swift-stdlib
    [ -n "$scratch" ] && set -- "$@" --scratch-path "$scratch"
    echo "Building release binaries (static Swift standard library)..."
    swift build "$@" --product meterd
    swift build "$@" --product meterctl
    binaries=$(swift build "$@" --show-bin-path)
fi
for binary in meterd meterctl; do
    [ -x "$binaries/$binary" ] || { echo "install.sh: $binaries/$binary not found" >&2; exit 1; }
done

echo "Installing binaries into $prefix/bin"
install -d "$prefix/bin"
for binary in meterd meterctl; do
    if [ "$(readlink -f "$binaries/$binary")" != "$(readlink -f "$prefix/bin/$binary" 2>/dev/null || true)" ]; then
        install -m 0755 "$binaries/$binary" "$prefix/bin/$binary"
    fi
done

echo "Creating the meterd user and group"
if command -v systemd-sysusers >/dev/null 2>&1; then
    install -D -m 0644 "$here/meterd.sysusers" /etc/sysusers.d/meterd.conf
    systemd-sysusers /etc/sysusers.d/meterd.conf
else
    getent group meterd >/dev/null || groupadd --system meterd
    getent passwd meterd >/dev/null || useradd --system --gid meterd --home-dir /var/lib/meterd --shell /usr/sbin/nologin meterd
fi

echo "Installing units and /etc/meterd/meterd.conf"
install -d /etc/systemd/system /etc/meterd
sed "s#/usr/local/bin/meterd#$prefix/bin/meterd#" "$here/meterd.service" > /etc/systemd/system/meterd.service
chmod 0644 /etc/systemd/system/meterd.service
install -m 0644 "$here/meterd.socket" /etc/systemd/system/meterd.socket
if [ ! -e /etc/meterd/meterd.conf ]; then
    install -m 0640 -g meterd "$here/meterd.conf" /etc/meterd/meterd.conf
fi

systemctl daemon-reload
if [ "$start" = yes ]; then
    systemctl enable --now meterd.socket
    systemctl enable --now meterd.service
    echo "meterd is running: systemctl status meterd; meterctl status"
else
    systemctl enable meterd.socket meterd.service
fi
