#!/bin/sh
# Read success at scale (issue 16 point 4): the memory and time of one KPI document over 100,000
# meters with a year of per-meter-day history (`meter_day`, 98% of meter-days reporting, 96
# readings each), computed offline by `meterctl kpi --db` (so the figures include loading the
# in-memory stores). Not a test: run it by hand.
#
#   Benchmarks/read_success.sh                         # 100,000 meters, 365 days, release build
#   CUSTOMERS=10000 DAYS=90 Benchmarks/read_success.sh # smaller
#   BIN=/path/to/other/bin Benchmarks/read_success.sh  # another build's binaries, same data recipe
#   KEEP=/path/dir Benchmarks/read_success.sh          # generate once into dir (reused when there)
#
# Prints the wall time and peak resident memory of `meterctl kpi --db` (the default period, then
# the 24 months ending with the current one), RUNS times each.
set -eu
CUSTOMERS=${CUSTOMERS:-100000}
DAYS=${DAYS:-365}
RUNS=${RUNS:-2}
SCRATCH=${SCRATCH:-.build-release}
if [ -z "${BIN:-}" ]; then
    swift build -c release --scratch-path "$SCRATCH" >/dev/null
    BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
fi
WORK=${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/meterd-read-success.XXXXXX")}
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT INT TERM
DB="$WORK/data/meterd.sqlite"

if [ ! -f "$WORK/ready" ]; then
    echo "== generate and import $CUSTOMERS customers x 24 months"
    mkdir -p "$WORK/data"
    "$BIN/meter-sim" generate --customers "$CUSTOMERS" --months 24 --year 2023 --out "$WORK/csv" >/dev/null
    "$BIN/meterctl" import "$WORK/csv" --db "$DB" >/dev/null
    echo "== $DAYS days of meter_day rows for each meter"
    NOW_MS=$(($(date +%s) * 1000))
    /usr/bin/time -f "meter_day: %e s" sqlite3 "$DB" <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
-- Days oldest first and meters in id order: rows arrive in the table's key order (day, meter_id).
WITH RECURSIVE d(i) AS (SELECT $DAYS UNION ALL SELECT i - 1 FROM d WHERE i > 1),
days(i, day) AS (SELECT i, CAST(strftime('%Y%m%d', $NOW_MS / 1000, 'unixepoch', '-' || i || ' days') AS INTEGER) FROM d)
INSERT INTO meter_day (day, meter_id, readings, spacing_sum_ms, spacing_count)
SELECT days.day, m.id, 96, 96 * 900000, 96 FROM days CROSS JOIN meter m WHERE (m.id * 7 + days.i) % 50 != 0;
-- What the writer keeps beside meter_day (migration v11-read-success-rollups): per meter-month
-- readings and spacing sums, per region-day the meters reporting.
INSERT INTO meter_month (meter_id, month, readings, spacing_sum_ms, spacing_count)
SELECT meter_id, day / 100, sum(readings), sum(spacing_sum_ms), sum(spacing_count) FROM meter_day GROUP BY meter_id, day / 100
ON CONFLICT (meter_id, month) DO UPDATE SET readings = excluded.readings, spacing_sum_ms = excluded.spacing_sum_ms,
    spacing_count = excluded.spacing_count;
DELETE FROM region_day;
INSERT INTO region_day (day, region, reporting)
SELECT d.day, m.region, count(*) FROM meter_day d JOIN meter m ON m.id = d.meter_id GROUP BY d.day, m.region;
UPDATE meter SET first_reading_day = CAST(strftime('%Y%m%d', $NOW_MS / 1000, 'unixepoch', '-$DAYS days') AS INTEGER),
    first_seen_ms = $NOW_MS - $DAYS * 86400000, last_received_ms = $NOW_MS - 900000;
COMMIT;
SQL
    echo "meter_day rows: $(sqlite3 "$DB" 'SELECT count(*) FROM meter_day')"
    touch "$WORK/ready"
fi

FROM=$(date -u -d "-23 months" +%Y-%m)
TO=$(date -u +%Y-%m)
for run in $(seq "$RUNS"); do
    /usr/bin/time -f "kpi default period, run $run: %e s, peak RSS %M KB" "$BIN/meterctl" kpi --db "$DB" --json >/dev/null
    /usr/bin/time -f "kpi $FROM..$TO, run $run: %e s, peak RSS %M KB" "$BIN/meterctl" kpi --db "$DB" --from "$FROM" --to "$TO" --json >/dev/null
done
