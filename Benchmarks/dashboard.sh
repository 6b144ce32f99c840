#!/bin/sh
# Dashboard API benchmark (issue 6): every API call the page makes, against a release meterd over
# 100,000 customers x 24 months; the target is <= 100 ms at the 95th percentile. Not a test: run it
# by hand.
#
#   Benchmarks/dashboard.sh                    # 100,000 customers, release build, temporary directory
#   CUSTOMERS=10000 Benchmarks/dashboard.sh    # smaller
#   BIN=/path/to/bin Benchmarks/dashboard.sh   # another build's binaries
#
# Besides the company's CSV files, the reading table gets READINGS_PER_METER live readings (default
# 48, half a day at one per 15 minutes) for half the meters, interleaved as a fleet sends them, so
# the readings endpoint reads a realistic append-only table; the other half never reported. The rows
# carry the per-meter chain (prev_rowid, meter.last_reading_rowid) the writer keeps. With
# --inactive-after 600 the reporting half (last heard 15 minutes ago) is flagged inactive at start, so
# /api/inactive lists flagged and never-heard-from meters.
set -eu
CUSTOMERS=${CUSTOMERS:-100000}
READINGS_PER_METER=${READINGS_PER_METER:-48}
SCRATCH=${SCRATCH:-.build}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meterd-dashboard-bench.XXXXXX")
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# BIN=dir runs another build's binaries (to compare two builds over the same recipe).
if [ -z "${BIN:-}" ]; then
    swift build -c release --scratch-path "$SCRATCH" >/dev/null
    BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
fi

echo "== generate and import $CUSTOMERS customers x 24 months"
"$BIN/meter-sim" generate --customers "$CUSTOMERS" --months 24 --year 2023 --out "$WORK/csv" >/dev/null
mkdir -p "$WORK/data"
/usr/bin/time -f "import: %e s" "$BIN/meterctl" import "$WORK/csv" --db "$WORK/data/meterd.sqlite" >/dev/null

echo "== $READINGS_PER_METER live readings for each of $((CUSTOMERS / 2)) meters"
NOW_MS=$(($(date +%s) * 1000))
/usr/bin/time -f "readings: %e s" sqlite3 "$WORK/data/meterd.sqlite" <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $READINGS_PER_METER * ($CUSTOMERS / 2) - 1)
INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status, fault, voltage, prev_rowid)
SELECT i % ($CUSTOMERS / 2) + 1, i / ($CUSTOMERS / 2) + 1,
       $NOW_MS - ($READINGS_PER_METER - i / ($CUSTOMERS / 2)) * 900000 - 1500,
       $NOW_MS - ($READINGS_PER_METER - i / ($CUSTOMERS / 2)) * 900000,
       0.1 + (i % 7) * 0.01, CASE WHEN i % 10 = 0 THEN 2 WHEN i % 5 = 0 THEN 1 ELSE 0 END, NULL, 230.0,
       -- the table is empty, so row i gets rowid i + 1; its meter's previous reading is a round earlier
       CASE WHEN i >= $CUSTOMERS / 2 THEN i + 1 - $CUSTOMERS / 2 ELSE 0 END
FROM n;
UPDATE meter SET hwm_seq = $READINGS_PER_METER, readings_total = $READINGS_PER_METER,
    first_seen_ms = $NOW_MS - $READINGS_PER_METER * 900000, last_received_ms = $NOW_MS - 900000,
    last_ts_ms = $NOW_MS - 901500, last_status = 0,
    last_reading_rowid = ($READINGS_PER_METER - 1) * ($CUSTOMERS / 2) + id
WHERE id <= $CUSTOMERS / 2;
-- The meter rows above already account for these readings: meterd must not apply them again at start.
UPDATE ingest_watermark SET reading_rowid = (SELECT MAX(rowid) FROM reading);
COMMIT;
SQL
echo "reading rows: $(sqlite3 "$WORK/data/meterd.sqlite" 'SELECT MAX(rowid) FROM reading')"

"$BIN/meterd" --data-dir "$WORK/data" --ingest 127.0.0.1:0 --http 127.0.0.1:0 --inactive-after 600 >"$WORK/meterd.log" 2>&1 &
PID=$!
for _ in $(seq 300); do [ -f "$WORK/data/ports.json" ] && grep -q http "$WORK/data/ports.json" && break; sleep 0.1; done
PORT=$(sed -n 's/.*"http":\([0-9]*\).*/\1/p' "$WORK/data/ports.json")
echo "== API calls of the dashboard (meterd on 127.0.0.1:$PORT)"
python3 "$(dirname "$0")/dashboard_bench.py" --url "http://127.0.0.1:$PORT" --customers "$CUSTOMERS" --requests "${REQUESTS:-60}" \
    ${JSON:+--json "$JSON"}
