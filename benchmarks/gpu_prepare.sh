#!/usr/bin/env bash
# Run HERE, before a GPU session: packs what benchmarks/gpu.sh needs on a device machine that
# reaches no package index and takes at most 64 MiB with the working tree:
#   DIR/data            the synthetic MIMIC-IV-format cohort (2,000 patients, seed 1), prepared
#   DIR/smollm2-shape   SmolLM2-135M's config and tokenizer (xz), no weights: gpu.sh gives it
#                       random weights there (same shapes, so the same speed and memory; the
#                       93.8 MiB GGUF does not fit the transfer)
#   DIR/wheels          polars for CPython 3.12 manylinux x86-64 (the device image lacks it)
# Usage: bash benchmarks/gpu_prepare.sh [DIR]   (default: gpu-bench, git-ignored); then on the
# device: carry DIR, run `bash benchmarks/gpu.sh DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-gpu-bench}"
PY="${PYTHON:-.venv/bin/python}"
POLARS="$("$PY" -c 'import importlib.metadata as m; print(m.version("polars"))')"
mkdir -p "$DIR"
[ -d "$DIR/raw" ] || "$PY" -m leader.cli synth --format mimic4 --patients 2000 --seed 1 \
  --out "$DIR/raw" >/dev/null
[ -d "$DIR/data" ] || "$PY" -m leader.cli prepare --source mimic4 --root "$DIR/raw" \
  --out "$DIR/data" >/dev/null
rm -rf "$DIR/raw"  # the prepared cohort is all the benchmark reads
"$PY" - "$DIR/smollm2-shape" <<'PYEOF'
import lzma
import shutil
import sys
from pathlib import Path

from leader.llm import smollm2_dir

source = smollm2_dir()  # the cached safetensors conversion (made once from the GGUF)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name in ("config.json", "generation_config.json", "tokenizer_config.json",
             "chat_template.jinja"):
    if (source / name).is_file():
        shutil.copy(source / name, out / name)
(out / "tokenizer.json.xz").write_bytes(lzma.compress((source / "tokenizer.json").read_bytes()))
PYEOF
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR/wheels" "polars==$POLARS" "polars-runtime-32==$POLARS"
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
packed=$(du -sb "$DIR" | cut -f1)
echo "$DIR: $((packed / 1048576)) MiB; with the working tree $(((tree + packed) / 1048576)) MiB (limit 64)"
