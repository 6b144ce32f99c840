#!/usr/bin/env bash
# The whole test suite, as CI runs it: debug build and swift test, the dashboard in a real browser,
# then the ingest path again under ThreadSanitizer. Screenshots go to $ARTIFACTS (./artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --build-tests
swift test --skip-build
echo "== dashboard in headless Chromium"
ARTIFACTS=${ARTIFACTS:-./artifacts} scripts/browser-tests.sh
echo "== ingest path under ThreadSanitizer"
swift test --scratch-path .build-tsan --sanitize=thread --filter "IngestServerTests|ConnectionLimitTests|IngestWriterTests|IngestPipelineTests"
