#!/usr/bin/env bash
# The dashboard in a real browser (issue 6): installs headless Chromium, its driver and Chart.js from
# Debian and Selenium + pytest from PyPI, builds meterd, generates a company and imports it, then runs
# Tests/browser (which start meterd on ephemeral ports, with and without Chart.js, and a small live
# fleet). Screenshots, downloads and meterd's log go to $ARTIFACTS (default ./artifacts).
#
#   scripts/browser-tests.sh                 # SCRATCH=.build by default (swift build --scratch-path)
#   ARTIFACTS=/tmp/shots scripts/browser-tests.sh -k drill
set -euo pipefail
cd "$(dirname "$0")/.."
ARTIFACTS=${ARTIFACTS:-./artifacts}
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
SCRATCH=${SCRATCH:-.build}
CUSTOMERS=${CUSTOMERS:-2000}

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
missing=()
for package in chromium chromium-driver libjs-chart.js; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c "import selenium, pytest" 2>/dev/null; then
    echo "Installing selenium and pytest from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check selenium pytest
fi

for product in meterd meterctl meter-sim; do
    swift build --scratch-path "$SCRATCH" --product "$product" 2>&1 | grep -E "error|warning: .*Sources" || true
done
BIN=$(swift build --scratch-path "$SCRATCH" --show-bin-path)
for product in meterd meterctl meter-sim; do
    [ -x "$BIN/$product" ] || { echo "browser-tests: $BIN/$product was not built" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meterd-browser.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Two years of months ending in December of this year: the default view (the last 12 months) and
# last year both have data.
YEAR=$(( $(date -u +%Y) - 1 ))
"$BIN/meter-sim" generate --customers "$CUSTOMERS" --months 24 --year "$YEAR" --out "$WORK/csv" >/dev/null
mkdir -p "$WORK/data"
"$BIN/meterctl" import "$WORK/csv" --db "$WORK/data/meterd.sqlite" >/dev/null

export METERD_BIN="$BIN/meterd" METERD_DATA="$WORK/data" ARTIFACTS SE_OFFLINE=true
set +e
timeout 600 python3 -m pytest -p no:cacheprovider -v Tests/browser "$@"
status=$?
set -e
echo "browser-tests: screenshots in $ARTIFACTS:" $(cd "$ARTIFACTS" && ls *.png 2>/dev/null)
exit $status
