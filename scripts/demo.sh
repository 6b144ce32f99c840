#!/usr/bin/env bash
# Quick start: meterd with a generated company, a live simulated fleet and the dashboard.
#   CUSTOMERS=500 METERS=500 INTERVAL=2 METERD_DATA=./meterd-data scripts/demo.sh    (Ctrl-C stops)
#   TLS=1 scripts/demo.sh: meters speak TLS with client certificates (meter_auth = certificate), as
#   data concentrators of 50 meters each, with throw-away certificates from scripts/make-certs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "Building release binaries (the first build takes a few minutes)…" >&2
swift build -c release
bin=$(swift build -c release --show-bin-path)
data=${METERD_DATA:-./meterd-data}
customers=${CUSTOMERS:-500}
meters=${METERS:-$customers}
mkdir -p "$data"
rm -f "$data/ports.json"

if [ ! -f "$data/meterd.sqlite" ]; then
    # History from January last year up to last month; the live fleet fills this month. Installations,
    # maintenance, feedback and complaints run up to today, so every panel of the default period has some.
    year=$(( $(date +%Y) - 1 ))
    months=$(( 12 + $(date +%-m) - 1 ))
    "$bin/meter-sim" generate --customers "$customers" --out "$data/company" --year "$year" --months "$months" --seed 42 \
        --events-through "$(date +%F)"
    "$bin/meterctl" import "$data/company" --db "$data/meterd.sqlite"
fi

tls_daemon=()
tls_sim=()
if [ "${TLS:-0}" = 1 ]; then
    # One concentrator certificate for the whole fleet; concentrators.csv assigns it every meter.
    scripts/make-certs.sh --out "$data/certs" --meters "$meters" --concentrator-only
    "$bin/meterctl" import "$data/certs" --db "$data/meterd.sqlite"
    tls_daemon=(--ingest-tls-cert "$data/certs/server.pem" --ingest-tls-key "$data/certs/server.key"
        --ingest-tls-client-ca "$data/certs/ca.pem" --meter-auth certificate)
    tls_sim=(--tls-ca "$data/certs/ca.pem" --tls-cert "$data/certs/concentrator.pem" --tls-key "$data/certs/concentrator.key" --concentrator 50)
fi

"$bin/meterd" --data-dir "$data" "${tls_daemon[@]}" &
daemon=$!
sim=""
trap 'kill -TERM $sim $daemon 2>/dev/null || true; wait $daemon 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 300); do [ -f "$data/ports.json" ] && grep -q http "$data/ports.json" && break; sleep 0.1; done
ingest=$(sed -n 's/.*"ingest":\([0-9]*\).*/\1/p' "$data/ports.json")
http=$(sed -n 's/.*"http":\([0-9]*\).*/\1/p' "$data/ports.json")
cat >&2 <<MSG

  meterd is running: meters on 127.0.0.1:$ingest, dashboard at http://127.0.0.1:$http/
  status: $bin/meterctl --socket $data/status.sock status
  $meters simulated meters send a reading every ${INTERVAL:-2} s. Ctrl-C stops both.

MSG
"$bin/meter-sim" run --host 127.0.0.1 --port "$ingest" --meters "$meters" --interval "${INTERVAL:-2}" "${tls_sim[@]}" &
sim=$!
wait $daemon
