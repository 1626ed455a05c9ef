#!/usr/bin/env bash
# LEADER teacher: one prompt, a short smollm2 fine-tune (LoRA + drug layer), feature export.
# Few steps on purpose (a few minutes on 2 CPU cores); real runs use --epochs / a GPU.
set -euo pipefail
DATA="$DEMO_OUT/data"
PATIENT=$(python -c "import polars as pl,sys; print(pl.read_parquet(sys.argv[1]).sort('visit_index').row(-1, named=True)['patient_id'])" "$DATA/visits.parquet")
leader prompt "$DATA" --patient "$PATIENT" --max-length 512
leader train-teacher --data "$DATA" --out "$DEMO_OUT/teacher" --llm smollm2 \
  --max-steps 4 --batch-size 4 --max-length 512 --force
leader export-features --teacher "$DEMO_OUT/teacher" --data "$DATA"
