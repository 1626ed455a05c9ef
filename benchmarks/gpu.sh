#!/usr/bin/env bash
# The teacher on one GPU (issue 10), prepared to take <= 8 minutes: a synthetic MIMIC-IV-format
# cohort, then benchmarks/teacher.py (train + export, smollm2) for each option, printing tokens/s,
# samples/s and peak GPU memory per option. 4/8-bit needs the optional extra: pip install
# 'leader[qlora]'. Usage: bash benchmarks/gpu.sh [OUT_DIR]   (default: gpu-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-bench}"
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -d "$OUT/raw" ] || "$PY" -m leader.cli synth --format mimic4 --patients 2000 --seed 1 --out "$OUT/raw" >/dev/null
[ -d "$OUT/data" ] || "$PY" -m leader.cli prepare --source mimic4 --root "$OUT/raw" --out "$OUT/data" >/dev/null
"$PY" -m leader.cli prompt-stats "$OUT/data" --llm smollm2 | tee "$OUT/prompts.txt"
configs="old,new,new-k4,new-ckpt,new-fp16"
if "$PY" -c "import bitsandbytes" 2>/dev/null; then configs="$configs,new-4bit,new-8bit"; fi
timeout 420 "$PY" benchmarks/teacher.py --data "$OUT/data" --llm smollm2 \
  --train-samples 256 --export-samples 512 --batch-size 8 --old-batch-size 8 \
  --configs "$configs" | tee "$OUT/teacher-gpu.json"
