#!/usr/bin/env bash
# Baselines on the demo cohort, small epochs so the demo stays a few minutes.
set -euo pipefail
DATA="$DEMO_OUT/data"
OUT="$DEMO_OUT/baselines"
for name in popular repeat-last logreg; do
  leader train-baseline "$name" --data "$DATA" --out "$OUT/$name" --force
done
for name in retain gamenet safedrug; do
  leader train-baseline "$name" --data "$DATA" --out "$OUT/$name" --epochs 5 --force
done
