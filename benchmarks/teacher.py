"""Teacher speed on this machine: training s/step and tokens/s, feature-export samples/s, memory.

Usage::

    .venv/bin/python benchmarks/teacher.py --data DATA_DIR [--llm smollm2] [--steps 6]

Uses the CLI defaults (batch 8, max length 512, LoRA r 8 on q/k/v/o/gate/up/down, fp32). The
first optimiser step is a warm-up and is not counted. Tokens/s counts padded positions (what the
model actually computes) and real tokens separately. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--export-batch-size", type=int, default=16)
    args = ap.parse_args()

    import numpy as np
    import torch

    from leader.bundle import save_bundle
    from leader.data.dataset import Dataset
    from leader.models.teacher import Teacher
    from leader.pipelines import export_features
    from leader.train import FitContext, train

    data = Dataset.load(args.data)
    t0 = time.perf_counter()
    model = Teacher(
        data.schema,
        {"llm": args.llm, "max_length": args.max_length,
         "train": {"batch_size": args.batch_size, "max_steps": args.steps}},
    )
    model.build()
    load_s = time.perf_counter() - t0
    task = model.task()

    sizes: list[tuple[int, int]] = []  # (padded positions, real tokens) per training batch
    collate = task.collate

    def recording_collate(samples):
        batch = collate(samples)
        if torch.is_grad_enabled():  # validation runs under no_grad
            sizes.append((batch.input_ids.numel(), int(batch.attention_mask.sum())))
        return batch

    task.collate = recording_collate
    stamps: list[float] = []
    start = time.perf_counter()
    context = FitContext(progress=False, on_step=lambda s: stamps.append(time.perf_counter()))
    train(task, data.samples("train"), [], model.config.train, context)
    intervals = np.diff([start, *stamps])[1:]  # drop the warm-up step
    steps = sizes[1 : len(intervals) + 1]
    seconds = float(intervals.sum())

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "teacher"
        save_bundle(model, out)
        n = len(data.samples())
        t1 = time.perf_counter()
        export_features(out, data, batch_size=args.export_batch_size)
        export_s = time.perf_counter() - t1

    result = {
        "llm": args.llm,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "load_build_s": round(load_s, 1),
        "timed_steps": len(intervals),
        "train_s_per_step": round(seconds / len(intervals), 2),
        "train_padded_tokens_per_s": round(sum(p for p, _ in steps) / seconds, 1),
        "train_real_tokens_per_s": round(sum(r for _, r in steps) / seconds, 1),
        "mean_padded_len": round(float(np.mean([p / args.batch_size for p, _ in steps])), 1),
        "export_samples": n,
        "export_samples_per_s": round(n / export_s, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
