#!/usr/bin/env bash
# Formats the Swift sources with the toolchain's swift-format and the checked-in .swift-format.
#   scripts/format.sh            reformats Sources, Tests, Simulator, Benchmarks, Fuzz and Package.swift in place
#   scripts/format.sh --check    lints them instead (--strict: any finding fails), for CI
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(Sources Tests Simulator Benchmarks Fuzz Package.swift)
case "${1:-}" in
    --check) swift format lint --strict --parallel --recursive "${paths[@]}" ;;
    "") swift format format --in-place --parallel --recursive "${paths[@]}" ;;
    *) echo "usage: scripts/format.sh [--check]" >&2; exit 2 ;;
esac
