#!/usr/bin/env bash
# A throw-away PostgreSQL 15 cluster for the tests, in a directory of its own:
#   scripts/postgres-test-server.sh start DIR [PID] initdb (first time) and start; prints DIR/server.env;
#                                                   with PID, the cluster is stopped and DIR removed once
#                                                   that process is gone (a test run that crashed)
#   scripts/postgres-test-server.sh stop DIR        fast shutdown (the cluster's files stay until DIR is removed;
#                                                   start DIR again brings it back on the same port)
#   scripts/postgres-test-server.sh crash DIR       immediate shutdown, as near a power cut as a test gets
#   scripts/postgres-test-server.sh createdb DIR NAME
#   scripts/postgres-test-server.sh tls DIR CERT KEY [hostssl]
#                                                   TLS on the running cluster with this certificate and
#                                                   key (PEM); with hostssl, TCP clients must use TLS
#
# PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the `postgres`
# user (Debian's package creates it), or `nobody` without it, and DIR is handed to that user.
# It listens on a Unix socket in DIR, where connections are trusted, and on a loopback port the
# script picks, where the superuser `meterd` needs its password (`meterd-test`): the tests of a
# wrong password go through TCP. DIR/server.env holds what clients need (socket dir, port, user,
# password), as shell assignments.
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
usage() {
    echo "usage: scripts/postgres-test-server.sh start DIR [PID] | stop|crash DIR | createdb DIR NAME | tls DIR CERT KEY [hostssl]" >&2
    exit 2
}
[ $# -ge 2 ] || usage
command=$1
dir=$(cd "$2" && pwd)
[ -x "$bin/pg_ctl" ] || {
    echo "PostgreSQL 15 is not installed ($bin/pg_ctl is missing): run scripts/install-deps.sh" >&2
    exit 1
}

# Runs a server program as the unprivileged owner of the cluster.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$owner" -- "$@"
    else
        "$@"
    fi
}
owner=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    owner=nobody
    id postgres >/dev/null 2>&1 && owner=postgres
fi

case "$command" in
start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        [ "$(id -u)" -ne 0 ] || chown "$owner" "$dir"
        printf '%s\n' meterd-test >"$dir/password"
        [ "$(id -u)" -ne 0 ] || chown "$owner" "$dir/password"
        as_owner "$bin/initdb" -D "$dir/data" -U meterd --pwfile="$dir/password" -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            exit 1
        }
    fi
    # A loopback port nobody uses: pick one at random and try the next on a clash. A restart
    # (after stop or crash) takes the port it had, so clients reconnect to the same address. Below
    # the ephemeral range: a test's client connection (thousands of meters) could otherwise hold
    # the port as its own local end while the server is down, and the restart could not bind it.
    previous=$(sed -n 's/^PGTEST_PORT=//p' "$dir/server.env" 2>/dev/null || true)
    ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$ephemeral_low" -gt 12000 ] || ephemeral_low=32768
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((10000 + RANDOM % (ephemeral_low - 10000)))
        if [ -n "$previous" ] && [ "$attempt" -le 3 ]; then port=$previous; fi
        if as_owner "$bin/pg_ctl" -D "$dir/data" -w -t 30 -l "$dir/server.log" \
            -o "-k $dir -c listen_addresses=127.0.0.1 -p $port -c fsync=on -c synchronous_commit=on" start >/dev/null; then
            cat >"$dir/server.env" <<EOF
PGTEST_SOCKET_DIR=$dir
PGTEST_PORT=$port
PGTEST_USER=meterd
PGTEST_PASSWORD=meterd-test
EOF
            cat "$dir/server.env"
            if [ -n "${3:-}" ]; then
                # Outlives this script, detached from its output, and ends with the watched process.
                watched=$3
                (
                    while kill -0 "$watched" 2>/dev/null; do sleep 2; done
                    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop
                    rm -rf "$dir"
                ) </dev/null >/dev/null 2>&1 &
            fi
            exit 0
        fi
        grep -q "Address already in use\|could not bind" "$dir/server.log" || {
            tail -20 "$dir/server.log" >&2
            exit 1
        }
    done
    echo "no free loopback port found for PostgreSQL" >&2
    exit 1
    ;;
stop) as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null ;;
crash) as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null ;;
createdb)
    [ $# -eq 3 ] || usage
    # shellcheck disable=SC1091
    . "$dir/server.env"
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PGTEST_PORT" -U meterd -d postgres -c "CREATE DATABASE \"$3\""
    ;;
tls)
    [ $# -ge 4 ] || usage
    # The server reads its key only if its owner alone can (or root owns it): copy both into the cluster.
    install -m 600 "$3" "$dir/data/server.crt"
    install -m 600 "$4" "$dir/data/server.key"
    [ "$(id -u)" -ne 0 ] || chown "$owner" "$dir/data/server.crt" "$dir/data/server.key"
    printf '%s\n' "ssl = on" "ssl_cert_file = 'server.crt'" "ssl_key_file = 'server.key'" | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    if [ "${5:-}" = hostssl ]; then
        as_owner sed -i 's/^host /hostssl /' "$dir/data/pg_hba.conf"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" reload >/dev/null
    # A reload is asynchronous: done once a TLS connection gets through.
    # shellcheck disable=SC1091
    . "$dir/server.env"
    for _ in $(seq 1 100); do
        if PGPASSWORD=$PGTEST_PASSWORD "$bin/psql" -X -q -d "host=127.0.0.1 port=$PGTEST_PORT user=meterd dbname=postgres sslmode=require" \
            -c "SELECT 1" >/dev/null 2>&1; then
            exit 0
        fi
        sleep 0.1
    done
    echo "PostgreSQL did not take TLS connections after the reload:" >&2
    tail -5 "$dir/server.log" >&2
    exit 1
    ;;
*) usage ;;
esac
