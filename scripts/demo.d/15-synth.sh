#!/usr/bin/env bash
# Synthetic MIMIC-IV tables with planted drug structure, then the same `prepare` on them.
set -euo pipefail
leader synth --format mimic4 --patients 2000 --out "$DEMO_OUT/raw-synth-mimic4" --seed 1 --force
leader prepare --source mimic4 --root "$DEMO_OUT/raw-synth-mimic4" --out "$DEMO_OUT/data-synth-mimic4" --force
