#!/usr/bin/env bash
# Runs the whole test suite on a debug build, then the ingest path again under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --build-tests
swift test --skip-build
echo "== ingest path under ThreadSanitizer"
swift test --scratch-path .build-tsan --sanitize=thread --filter "IngestServerTests|ConnectionLimitTests|IngestWriterTests"
