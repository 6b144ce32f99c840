#!/usr/bin/env bash
# Fuzzes the ingest decoder with libFuzzer (Swift toolchain's -sanitize=fuzzer, plus AddressSanitizer).
#   scripts/fuzz.sh [RUNS]     default 10,000,000 inputs; seeds from Fuzz/corpus, new finds kept in a temp dir
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swiftc -O -sanitize=fuzzer,address -parse-as-library -package-name meterd -module-name ReadingParserFuzzer \
    Fuzz/ReadingParserFuzzer.swift \
    Sources/MeterCore/Ingest/ReadingParser.swift Sources/MeterCore/Model/Reading.swift Sources/MeterCore/Model/RFC3339.swift \
    -o "$work/fuzzer"
mkdir -p "$work/corpus"
cp Fuzz/corpus/* "$work/corpus/"
"$work/fuzzer" -runs="$runs" -max_len=4096 -dict=Fuzz/reading.dict -print_final_stats=1 "$work/corpus"
