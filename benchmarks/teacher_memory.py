"""Peak memory of one teacher training step and one export batch at the full 2,048-token budget.

Usage::

    .venv/bin/python benchmarks/teacher_memory.py --data DATA_DIR [--llm smollm2] [--length 2048]
        [--rows R] [--steps 3] [--config '{"dtype": "fp32"}']

WHY: synthetic cohorts rarely reach the budget, but real MIMIC-IV prompts do (max ~2,200 tokens
measured on a real cohort). This builds the worst batch the defaults allow: rows of exactly
``--length`` real tokens (a real prompt's ids repeated to that length), as many as
``max_batch_tokens`` lets into one batch (default 2,048: 1 row; ``--rows`` sets it), and runs
``--steps`` optimiser steps (forward, backward, AdamW; later steps show what the allocator keeps)
and one no-grad export forward of the same batch. Prints the memory
estimate next to the measured peak RSS (and peak GPU memory on a GPU) as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--rows", type=int, help="rows per batch (default: as many as the cap allows)")
    ap.add_argument("--steps", type=int, default=1, help="training steps on the same batch")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--config", default="{}",
                    help='more teacher options as JSON, e.g. \'{"dtype": "fp32"}\'')
    args = ap.parse_args()

    import torch

    from leader.data.dataset import Dataset
    from leader.models.teacher import PromptBatch, Teacher
    from leader.train import cut_batches

    data = Dataset.load(args.data)
    model = Teacher(data.schema, {"llm": args.llm, **json.loads(args.config),
                                  "gradient_checkpointing": args.gradient_checkpointing})
    model.build()
    task = model.task()
    sample = data.samples("train")[0]
    ids = list(task.prompt(sample).input_ids)
    row = (ids * (args.length // len(ids) + 1))[: args.length]
    cap = model.config.max_batch_tokens
    batch_rows = args.rows or len(cut_batches(range(8), [args.length] * 8, 8, cap)[0])
    input_ids, mask = task.pad([row] * batch_rows)
    target = torch.zeros(batch_rows, len(data.drugs))
    device = next(model.module.parameters()).device
    batch = PromptBatch(input_ids, mask, target).to(device)
    def estimate(checkpointing: bool):
        return model.estimate_batch(batch_rows * args.length, args.length, checkpointing)

    mode = args.gradient_checkpointing
    checkpointing = mode == "on"
    if mode == "auto":  # as Teacher.plan_memory decides, for this batch
        from leader.memory import memory_budget_gib
        from leader.models.teacher import enable_checkpointing

        if estimate(False).total_gib > memory_budget_gib(device):
            enable_checkpointing(model.module.decoder)
            checkpointing = True
    estimate = estimate(checkpointing)
    module = model.module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    def sync() -> None:  # GPU work is asynchronous: wait for it before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(args.steps):  # later steps show what the allocator keeps between steps
        loss, _ = task.loss(module, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    sync()
    train_s = (time.perf_counter() - t0) / args.steps
    train_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    module.eval()
    t1 = time.perf_counter()
    with torch.no_grad():
        module(batch.input_ids, batch.attention_mask)
    sync()
    export_s = time.perf_counter() - t1
    print(json.dumps({
        "llm": args.llm,
        "dtype": model.dtype,
        "config": json.loads(args.config),
        "rows": batch_rows,
        "length": args.length,
        "max_batch_tokens": cap,
        "gradient_checkpointing": checkpointing,
        "estimate": estimate.to_dict(),
        "steps": args.steps,
        "train_step_s": round(train_s, 1),
        "export_batch_s": round(export_s, 1),
        "peak_rss_gib_after_train_step": round(train_peak, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_gpu_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                         if torch.cuda.is_available() else None),
    }, indent=2))


if __name__ == "__main__":
    main()
