#!/usr/bin/env bash
# Rebuild tests/fixtures/meds_etl/: a small `leader synth --format mimic4` draw (raw/) and what
# meds_etl's MIMIC-IV converter makes of it (meds/), see scripts/meds-etl-convert.sh.
# Usage: scripts/make-meds-etl-fixture.sh [MEDS_ETL_VENV] [PATIENTS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/medsetl-venv}"
PATIENTS="${2:-150}"
SEED="${3:-7}"
OUT=tests/fixtures/meds_etl
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"${PYTHON:-python}" -m leader.cli synth --format mimic4 --patients "$PATIENTS" --seed "$SEED" \
  --out "$WORK/synth"
bash scripts/meds-etl-convert.sh "$WORK/synth" "$WORK/meds" "$VENV"
rm -rf "$OUT/raw" "$OUT/meds"
mkdir -p "$OUT/raw"
cp -r "$WORK/synth/hosp" "$OUT/raw/hosp"
cp -r "$WORK/meds" "$OUT/meds"
"$VENV/bin/pip" freeze | grep -i -E '^(meds|polars)' > "$OUT/VERSIONS.txt"
echo "patients=$PATIENTS seed=$SEED" >> "$OUT/VERSIONS.txt"
du -sh "$OUT"
