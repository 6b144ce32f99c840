#!/usr/bin/env bash
# The whole test suite, as CI runs it: the dashboard's JavaScript through node --check, debug build and
# swift test, the dashboard in a real browser, then the ingest path again under ThreadSanitizer.
# Screenshots go to $ARTIFACTS (./artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== Swift formatting: scripts/format.sh --check (.swift-format)"
scripts/format.sh --check
echo "== dashboard JavaScript: node --check"
node --check Sources/MeterCore/Dashboard/Assets/dashboard.js
swift build --build-tests
# Tests that time answers under load run after the suite, alone: in parallel with the rest they
# measure the other tests' load, not meterd.
timed="statusAnswersPromptlyWhileTenThousandMetersSend|aConnectionThatSendsNothingIsClosedAfterTheIdleTimeout"
swift test --skip-build --skip "$timed"
echo "== timing-sensitive tests, alone"
swift test --skip-build --filter "$timed"
echo "== dashboard in headless Chromium"
ARTIFACTS=${ARTIFACTS:-./artifacts} scripts/browser-tests.sh
echo "== ingest path under ThreadSanitizer"
swift test --scratch-path .build-tsan --sanitize=thread --filter "IngestServerTests|ConnectionLimitTests|IngestWriterTests|IngestPipelineTests"
