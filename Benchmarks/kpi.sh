#!/bin/sh
# KPI benchmark (issue 4): the KPI document over 100,000 customers x 24 months, with and without a
# region filter; the target is <= 100 ms at the 95th percentile. Not a test: run it by hand.
#
#   Benchmarks/kpi.sh                 # 100,000 customers, release build, temporary directory
#   CUSTOMERS=10000 Benchmarks/kpi.sh # smaller
#
# Prints the generator's and the importer's times, the first KPI document's time (which loads the
# in-memory meter-month store) and p50/p95/max per case.
set -eu
CUSTOMERS=${CUSTOMERS:-100000}
SCRATCH=${SCRATCH:-.build}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meterd-kpi-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

swift build -c release --scratch-path "$SCRATCH" >/dev/null
BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)

echo "== generate $CUSTOMERS customers x 24 months"
/usr/bin/time -f "%e s, %M KB peak" "$BIN/meter-sim" generate --customers "$CUSTOMERS" --months 24 --year 2023 --out "$WORK/csv"
echo "== import"
/usr/bin/time -f "%e s, %M KB peak" "$BIN/meterctl" import "$WORK/csv" --db "$WORK/meterd.sqlite"
echo "== KPI document"
/usr/bin/time -f "%e s, %M KB peak" "$BIN/meter-bench" kpi --db "$WORK/meterd.sqlite" --to 2024-12 --region North --iterations "${ITERATIONS:-40}"
