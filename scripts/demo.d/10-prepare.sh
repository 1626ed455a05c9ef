#!/usr/bin/env bash
# Prepare the cohort from the bundled MIMIC-III demo and print its statistics table.
set -euo pipefail
leader prepare --source mimic3 --root demo --out "$DEMO_OUT/data" --force
leader info "$DEMO_OUT/data"
