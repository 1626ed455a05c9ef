#!/usr/bin/env bash
# `make demo`: the whole pipeline on the bundled MIMIC-III demo, stage by stage (scripts/demo.d/).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_OUT="${DEMO_OUT:-demo-out}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$DEMO_OUT"
for stage in scripts/demo.d/*.sh; do
  echo
  echo "=== $(basename "$stage" .sh) ==="
  bash "$stage"
done
