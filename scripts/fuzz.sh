#!/usr/bin/env bash
# Fuzzes the ingest decoder with libFuzzer (Swift toolchain's -sanitize=fuzzer, plus AddressSanitizer).
#   scripts/fuzz.sh [RUNS]     default 10,000,000 inputs; seeds from Fuzz/corpus, new finds kept in a temp dir
# METERD_FUZZ=1 adds the package's ReadingParserFuzzer target (Fuzz/) and instruments MeterCore for it;
# it builds in its own scratch directory (SCRATCH, default .build-fuzz), so .build stays as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
scratch=${SCRATCH:-.build-fuzz}
export METERD_FUZZ=1
swift build -c release --scratch-path "$scratch" --product ReadingParserFuzzer
fuzzer="$(swift build -c release --scratch-path "$scratch" --show-bin-path)/ReadingParserFuzzer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
cp Fuzz/corpus/* "$work/corpus/"
"$fuzzer" -runs="$runs" -max_len=4096 -dict=Fuzz/reading.dict -print_final_stats=1 "$work/corpus"
