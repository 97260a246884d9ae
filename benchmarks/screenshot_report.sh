#!/usr/bin/env bash
# Render an `air report` page in a real headless browser and save a screenshot, to check by eye that the
# page lays out and every embedded image shows.
#
#   benchmarks/screenshot_report.sh RUN/report/index.html [OUT.png] [WIDTHxHEIGHT]
#
# Needs chromium (Debian: apt-get install -y chromium). The browser runs without network access to anything:
# the page is self-contained (images are base64 data URIs), so nothing is fetched.
set -euo pipefail
page=${1:?usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-${page%.html}.screenshot.png}
size=${3:-1200x3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "screenshot_report.sh: no chromium found (Debian: apt-get install -y chromium)" >&2
  exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --no-first-run --user-data-dir="$profile" --hide-scrollbars --screenshot="$(realpath -m "$out")" \
  --window-size="${size/x/,}" "file://$(realpath "$page")" >/dev/null 2>&1
test -s "$out" || { echo "screenshot_report.sh: chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
