#!/usr/bin/env bash
# Things the tests need outside the virtual environment (installed once, skipped when present).
set -euo pipefail
# The browser test (tests/test_browser.py) drives Debian's chromium through playwright's client.
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
