#!/bin/sh
# End-to-end test of Deploy/ under real systemd, in a throw-away systemd-nspawn container booted
# from this machine's own root (nothing on the host changes; the container's root is a tmpfs).
#
#   scripts/e2e-systemd.sh [BIN_DIR]
#
# BIN_DIR holds meterd and meterctl: release binaries built with --static-swift-stdlib, or any
# build linked to a toolchain's runtime (CI passes its debug build; the toolchain is bound in
# read-only). Without it they are built into .build-e2e. Needs root and systemd-nspawn (apt-get install -y systemd-container).
# Checks: install.sh, socket activation on the first connection, READY (unit active only after
# it), STATUS= text, meterctl over the status socket, structured journal fields, a watchdog
# restart while the writer is stalled by a held SQLite lock, and a clean stop with STOPPING=1.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
bins=${1:-}
[ "$(id -u)" -eq 0 ] || { echo "e2e: run as root" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "e2e: systemd-nspawn missing (apt-get install -y systemd-container)" >&2; exit 1; }

if [ -z "$bins" ]; then
    echo "e2e: building release binaries (static Swift standard library)..."
    (cd "$repo" && swift build -c release --static-swift-stdlib --scratch-path .build-e2e --product meterd >/dev/null &&
        swift build -c release --static-swift-stdlib --scratch-path .build-e2e --product meterctl >/dev/null)
    bins=$(cd "$repo" && swift build -c release --static-swift-stdlib --scratch-path .build-e2e --show-bin-path)
fi

W=$(mktemp -d /tmp/meterd-e2e.XXXXXX)
NSPAWN=
cleanup() {
    status=$?
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN" 2>/dev/null || true
        i=0; while kill -0 "$NSPAWN" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$NSPAWN" 2>/dev/null || true
        wait "$NSPAWN" 2>/dev/null || true
    fi
    # nspawn --keep-unit leaves its emptied payload/supervisor cgroups (and their children)
    # behind, in our own cgroup of the unified and the name=systemd hierarchies.
    for base in "/sys/fs/cgroup/unified$(sed -n 's/^0:://p' /proc/self/cgroup)" \
                "/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)" \
                "/sys/fs/cgroup/systemd$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)"; do
        for leftover in "$base/payload" "$base/supervisor"; do
            [ -d "$leftover" ] && find "$leftover" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
    done
    rm -rf "$W"
    exit $status
}
trap cleanup EXIT INT TERM

fail() {
    echo "e2e: FAIL: $*" >&2
    if [ -n "${L:-}" ]; then
        echo "--- journalctl -u meterd (last 40) ---" >&2
        inside journalctl -u meterd --no-pager -n 40 >&2 || true
    fi
    exit 1
}
pass() { echo "e2e: ok: $*"; }

# Poll up to $1 tenths of a second for a command to succeed.
until_ok() {
    tries=$1; shift
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1)); [ $tries -gt 0 ] || return 1
        sleep 0.1
    done
}

mkdir -p "$W/ul/bin"
install -m 0755 "$bins/meterd" "$bins/meterctl" "$W/ul/bin/"
# Binaries linked to the toolchain's Swift runtime (a debug build, as CI has) find it read-only
# at the same path; the container's volatile root brings only /usr from the host.
toolchain=
runtime=$(ldd "$bins/meterd" | awk '/libswiftCore\.so/ { print $3 }')
case "$runtime" in
    /usr/*|"") ;;
    *) toolchain=${runtime%/usr/lib/swift/linux/libswiftCore.so} ;;
esac
echo 'disable *' > "$W/00-ci.preset"

echo "e2e: booting a container..."
systemd-nspawn --quiet --register=no --keep-unit --volatile=yes -D / --private-network \
    --overlay=/usr/local:"$W/ul":/usr/local --bind-ro="$repo/Deploy":/opt/meterd/Deploy \
    --bind-ro="$W/00-ci.preset":/etc/systemd/system-preset/00-ci.preset \
    ${toolchain:+--bind-ro="$toolchain"} \
    --console=passive -b systemd.firstboot=off >"$W/nspawn.log" 2>&1 &
NSPAWN=$!
L=
for _ in $(seq 100); do
    L=$(pgrep -P "$NSPAWN" -x systemd || true)
    [ -n "$L" ] && break
    sleep 0.1
done
[ -n "$L" ] || { cat "$W/nspawn.log" >&2; L=; fail "container's systemd did not start"; }
inside() { nsenter -t "$L" -a "$@"; }
running() { state=$(inside systemctl is-system-running 2>/dev/null || true); [ "$state" = running ] || [ "$state" = degraded ]; }
until_ok 600 running || fail "container did not finish booting ($(inside systemctl is-system-running || true))"
pass "container booted ($(inside systemctl is-system-running || true))"

# Install as an operator would, but start it ourselves to watch activation.
inside /opt/meterd/Deploy/install.sh --binaries /usr/local/bin --no-start >"$W/install.log" 2>&1 || { cat "$W/install.log" >&2; fail "install.sh"; }
inside id meterd >/dev/null || fail "install.sh created no meterd user"
# A short watchdog and debug logs for this test (debug carries the per-line PEER/CODE/METER fields).
inside mkdir -p /etc/systemd/system/meterd.service.d
inside sh -c 'cat > /etc/systemd/system/meterd.service.d/e2e.conf' <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/local/bin/meterd --config /etc/meterd/meterd.conf --log-level debug
WatchdogSec=3s
UNIT
inside systemctl daemon-reload
pass "install.sh installed binaries, user, units and config"

# Socket activation: the service starts on the first connection, not before.
inside systemctl start meterd.socket
[ "$(inside systemctl is-active meterd.service || true)" = inactive ] || fail "meterd.service started before any connection"
now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
future=$(date -u -d '+2 hours' +%Y-%m-%dT%H:%M:%S.000Z)
send() {  # send LINES, print the first N answer lines
    inside timeout 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7700; printf "%s" "$1" >&3; head -n "$2" <&3' sh "$1" "$2"
}
answer=$(send "{\"meter\":\"MTR-E2E\",\"seq\":1,\"ts\":\"$now\",\"kwh\":0.5}
" 1) || fail "no answer from the activated socket"
[ "$answer" = '{"meter":"MTR-E2E","ack":1}' ] || fail "unexpected answer: $answer"
pass "socket activation: first connection started meterd and the reading was acked"

# READY=1: a Type=notify unit is active only after it.
[ "$(inside systemctl show -P ActiveState meterd.service)" = active ] || fail "meterd.service not active"
inside journalctl -u meterd --no-pager | grep -q 'Using sockets passed by systemd' || fail "meterd did not use the passed socket"
inside journalctl -u meterd --no-pager | grep -q 'meterd ready' || fail "no readiness in the journal"
pass "READY=1: meterd.service is active (Type=notify)"

# STATUS= with live figures, refreshed every few seconds.
status_has() { inside systemctl show -P StatusText meterd.service | grep -q "$1"; }
until_ok 150 status_has 'inactive meters' || fail "StatusText: '$(inside systemctl show -P StatusText meterd.service)'"
pass "STATUS=: $(inside systemctl show -P StatusText meterd.service)"

# meterctl through the status socket, as root.
# Meter counts are cached for up to 2 s, so the first answers may predate the reading.
meters_active() { inside /usr/local/bin/meterctl status | grep -q 'meters  *active 1'; }
until_ok 50 meters_active || { inside /usr/local/bin/meterctl status >&2 || true; fail "meterctl status"; }
[ "$(inside stat -c %a /run/meterd/status.sock)" = 660 ] || fail "status socket is not mode 0660"
pass "meterctl status answers over /run/meterd/status.sock (mode 0660)"

# Structured journal fields.
send "not json
{\"meter\":\"MTR-SKEW\",\"seq\":1,\"ts\":\"$future\",\"kwh\":0.5}
" 2 >/dev/null || fail "no answers to bad lines"
journal_has() { inside journalctl -u meterd -o json --no-pager | grep "$1" | grep -q "$2"; }
until_ok 50 journal_has '"CODE":"invalid_json"' '"PEER":"' || fail "no PEER/CODE fields in the journal"
journal_has '"CODE":"clock_skew"' '"METER":"MTR-SKEW"' || fail "no METER field in the journal"
journal_has '"MESSAGE":"Ingest server listening"' '"INGEST_ADDRESS":' || fail "no INGEST_ADDRESS field"
journal_has '"SYSLOG_IDENTIFIER":"meterd"' '"PRIORITY":"6"' || fail "no SYSLOG_IDENTIFIER/PRIORITY"
pass "journald: MESSAGE, PRIORITY, PEER, CODE, METER, INGEST_ADDRESS fields"

# Watchdog: hold SQLite's write lock so the writer cannot commit; systemd must restart meterd.
restarts_before=$(inside systemctl show -P NRestarts meterd.service)
inside sh -c '(echo "BEGIN EXCLUSIVE;"; sleep 25) | sqlite3 /var/lib/meterd/meterd.sqlite' &
LOCKER=$!
sleep 1
inside timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/7700; printf '%s\n' '{\"meter\":\"MTR-E2E\",\"seq\":2,\"ts\":\"$now\",\"kwh\":0.5}' >&3; sleep 4" || true
restarted() { [ "$(inside systemctl show -P NRestarts meterd.service)" -gt "$restarts_before" ]; }
until_ok 300 restarted || { kill "$LOCKER" 2>/dev/null || true; fail "no restart after the writer stalled"; }
inside journalctl -u meterd --no-pager | grep -q 'Watchdog timeout' || fail "restart was not the watchdog's"
inside pkill -x sqlite3 || true
wait "$LOCKER" 2>/dev/null || true
pass "watchdog: stalled writer withheld WATCHDOG=1, systemd restarted meterd (NRestarts=$(inside systemctl show -P NRestarts meterd.service))"

# After the restart the meter resends and is acked; nothing was lost.
until_ok 300 sh -c "[ \"\$(nsenter -t $L -a systemctl show -P ActiveState meterd.service)\" = active ]" || fail "meterd not active again"
answer=$(send "{\"meter\":\"MTR-E2E\",\"seq\":2,\"ts\":\"$now\",\"kwh\":0.5}
" 1) || fail "no answer after the restart"
[ "$answer" = '{"meter":"MTR-E2E","ack":2}' ] || fail "unexpected answer after restart: $answer"
pass "after the restart the resent reading is acked"

# STOPPING=1 on stop, and a clean exit.
inside systemctl stop meterd.service
inside journalctl -u meterd --no-pager | grep -q 'Told systemd meterd is stopping' || fail "no STOPPING=1"
[ "$(inside systemctl show -P Result meterd.service)" = success ] || fail "stop result: $(inside systemctl show -P Result meterd.service)"
pass "STOPPING=1 and a clean stop (Result=success)"

# The same hardened unit with TLS ingest and meter_auth = certificate (README "Security").
"$repo/scripts/make-certs.sh" --out "$W/tls" --meter MTR-TLS-1 --meter MTR-TLS-2 >/dev/null
inside mkdir -p /etc/meterd/tls /root/tls
for file in server.pem server.key ca.pem; do inside sh -c "cat > /etc/meterd/tls/$file" <"$W/tls/$file"; done
inside chgrp meterd /etc/meterd/tls/server.key
inside chmod 0640 /etc/meterd/tls/server.key
for file in ca.pem meters/MTR-TLS-1.pem meters/MTR-TLS-1.key; do inside sh -c "cat > /root/tls/${file##*/}" <"$W/tls/$file"; done
inside sed -i -e 's|^# ingest_tls_cert = .*|ingest_tls_cert = /etc/meterd/tls/server.pem|' \
    -e 's|^# ingest_tls_key = .*|ingest_tls_key = /etc/meterd/tls/server.key|' \
    -e 's|^# ingest_tls_client_ca = .*|ingest_tls_client_ca = /etc/meterd/tls/ca.pem|' \
    -e 's|^# meter_auth = .*|meter_auth = certificate|' -e 's|^allow_insecure = true|# allow_insecure = true|' /etc/meterd/meterd.conf
# Without allow_insecure: the ingest socket listens on every address, which meter_auth = certificate makes safe.
inside grep -q '^allow_insecure' /etc/meterd/meterd.conf && fail "allow_insecure is still set"
inside systemctl start meterd.service
inside journalctl -u meterd --no-pager -o json | grep '"MESSAGE":"Ingest TLS on"' | grep -q '"METER_AUTH":"certificate"' ||
    inside journalctl -u meterd --no-pager | grep -q 'Ingest TLS on' || fail "meterd did not start with ingest TLS"
send_tls() {  # send LINES as the meter whose certificate is $3 (or none), print the first N answer lines
    # s_client ends when its input does: keep that open long enough for the answer.
    inside timeout 20 sh -c '(printf "%s" "$1"; sleep 3) | openssl s_client -quiet -no_ign_eof -verify_return_error \
        -connect 127.0.0.1:7700 -servername localhost -CAfile /root/tls/ca.pem $3 2>/dev/null | head -n "$2"' sh "$1" "$2" "$3"
}
as_meter="-cert /root/tls/MTR-TLS-1.pem -key /root/tls/MTR-TLS-1.key"
answer=$(send_tls "{\"meter\":\"MTR-TLS-1\",\"seq\":1,\"ts\":\"$now\",\"kwh\":0.5}
" 1 "$as_meter") || true
[ "$answer" = '{"meter":"MTR-TLS-1","ack":1}' ] || fail "a meter with its own certificate was not acked: '$answer'"
answer=$(send_tls "{\"meter\":\"MTR-TLS-2\",\"seq\":1,\"ts\":\"$now\",\"kwh\":0.5}
" 1 "$as_meter") || true
case "$answer" in '{"error":"forbidden","line":1,'*) ;; *) false ;; esac || fail "MTR-TLS-1's certificate sending for MTR-TLS-2 was answered '$answer'"
answer=$(send_tls "{\"meter\":\"MTR-TLS-1\",\"seq\":2,\"ts\":\"$now\",\"kwh\":0.5}
" 1 "") || true
case "$answer" in *'"ack"'*) fail "a connection without a client certificate was acked: '$answer'" ;; esac
answer=$(send "{\"meter\":\"MTR-TLS-1\",\"seq\":2,\"ts\":\"$now\",\"kwh\":0.5}
" 1 2>/dev/null) || true
# (It gets a TLS alert record at most.)
case "$answer" in *'"ack"'*) fail "a plain TCP connection was acked: '$answer'" ;; esac
# `systemctl reload` (the unit's ExecReload, SIGHUP) reloads the certificate and leaves meterd running.
inside systemctl reload meterd.service || fail "systemctl reload meterd failed"
reloaded() { inside journalctl -u meterd --no-pager | grep -q 'Ingest TLS certificate reloaded'; }
until_ok 100 reloaded || fail "no 'Ingest TLS certificate reloaded' in the journal after systemctl reload"
[ "$(inside systemctl show -P ActiveState meterd.service)" = active ] || fail "meterd not active after systemctl reload"
pass "systemctl reload: the ingest certificate reloaded, meterd still active"
inside systemctl stop meterd.service
stored=$(inside sqlite3 /var/lib/meterd/meterd.sqlite "SELECT group_concat(m.name || '#' || r.seq) FROM reading r JOIN meter m ON m.id = r.meter_id WHERE m.name LIKE 'MTR-TLS-%'" 2>&1) ||
    fail "reading the database: $stored"
[ "$stored" = "MTR-TLS-1#1" ] || fail "stored TLS readings: '$stored' (want MTR-TLS-1#1 only)"
pass "TLS ingest with meter_auth = certificate and no allow_insecure: own meter acked, another meter's id forbidden, no certificate and plain TCP refused, one reading stored"
echo "e2e: PASS"
