#!/usr/bin/env bash
# Things the tests need outside the virtual environment (installed once, skipped when present).
set -euo pipefail
