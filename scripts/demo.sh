#!/usr/bin/env bash
# Quick start: builds meterd, starts it with a small simulated fleet, and stops both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product meterd
swift build -c release --product meter-sim
bin=.build/release
data=${METERD_DATA:-./meterd-data}
mkdir -p "$data"
rm -f "$data/ports.json"

"$bin/meterd" --data-dir "$data" &
daemon=$!
trap 'kill -TERM $sim $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do [ -f "$data/ports.json" ] && break; sleep 0.1; done
port=$(sed -n 's/.*"ingest":\([0-9]*\).*/\1/p' "$data/ports.json")
echo "meterd is listening for meters on 127.0.0.1:$port; data in $data. Ctrl-C stops."
"$bin/meter-sim" run --host 127.0.0.1 --port "$port" --meters "${METERS:-200}" --interval "${INTERVAL:-2}" &
sim=$!
wait $daemon
