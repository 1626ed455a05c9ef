"""Where one all-layer teacher training step spends its time, and what exact arithmetic must cost.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/teacher_profile.py --data DATA_DIR [--llm smollm2]
        [--rows 8] [--select middle|longest] [--config '{"dtype": "fp32"}']

A CPU profile (operators' CPU time). WHY: the issue's 3x all-layer training goal is measured
against the old path; this says how much of today's step could still go. It builds one batch of
``--rows`` training prompts (around the split's median length, or its longest), runs two warm-up
steps, profiles a third (forward, backward) and groups the operators' own CPU time: the
backbone's matrix multiplies (with their FLOPs, counted in a fourth step), the attention kernel,
the dropout masks, casts, the other element-wise work. ``floor_share`` is the share of the step
that exact LoRA on every block cannot avoid on this CPU (its matrix multiplies and attention):
an all-layer speed-up of R over the old path could grow to at most R / floor_share if everything
else took no time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GROUPS = {  # operator (own CPU time) -> group; anything else is "other"
    "aten::mm": "matrix multiplies",
    "aten::addmm": "matrix multiplies",
    "aten::bmm": "matrix multiplies",
    "aten::random_": "dropout masks",
    "aten::ge": "dropout masks",
    "aten::copy_": "casts and copies",
    "aten::mul": "element-wise",
    "aten::mul_": "element-wise",
    "aten::add": "element-wise",
    "aten::add_": "element-wise",
    "aten::div": "element-wise",
    "aten::silu": "element-wise",
    "aten::silu_backward": "element-wise",
    "aten::pow": "element-wise",
    "aten::neg": "element-wise",
    "aten::rsqrt": "element-wise",
    "aten::mean": "element-wise",
    "aten::sum": "element-wise",
    "aten::cat": "element-wise",
}


def group(name: str) -> str:
    if "scaled_dot_product" in name:
        return "attention"
    return GROUPS.get(name, "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--select", choices=["middle", "longest"], default="middle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default="{}",
                    help='more teacher options as JSON, e.g. \'{"dtype": "fp32"}\'')
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from leader.data.dataset import Dataset
    from leader.models.teacher import Teacher

    data = Dataset.load(args.data)
    model = Teacher(data.schema, {"llm": args.llm, **json.loads(args.config)})
    model.build()
    torch.set_num_threads(args.threads)
    task = model.task()
    samples = sorted(data.samples("train"), key=lambda s: len(task.prompt(s).input_ids))
    if args.select == "longest":
        chosen = samples[-args.rows:]
    else:
        mid = len(samples) // 2
        chosen = samples[mid - args.rows // 2: mid - args.rows // 2 + args.rows]
    batch = task.collate(chosen).to(next(model.module.parameters()).device)
    module = model.module.train()
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        loss, _ = task.loss(module, batch)
        loss.backward()
        for p in params:
            p.grad = None

    step()
    t0 = time.perf_counter()
    step()
    warm_s = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # counting FLOPs here slows it
        step()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        key = group(event.key)
        groups[key] = groups.get(key, 0.0) + event.self_cpu_time_total / 1e6
    with FlopCounterMode(display=False) as counter:  # a fourth step, for the FLOPs alone
        step()
    mm_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items()
                   if str(op).split(".")[1] in ("mm", "addmm", "bmm"))
    total = sum(groups.values())
    floor = groups.get("matrix multiplies", 0.0) + groups.get("attention", 0.0)
    real = int(batch.attention_mask.sum())
    print(json.dumps({
        "llm": args.llm,
        "dtype": model.dtype,
        "config": json.loads(args.config),
        "threads": args.threads,
        "batch": list(batch.input_ids.shape),
        "real_tokens": real,
        "unprofiled_step_s": round(warm_s, 2),
        "profiled_step_s": round(total, 2),
        "seconds": {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "matrix_multiply_tflop": round(mm_flops / 1e12, 3),
        "matrix_multiply_gflop_per_s": round(mm_flops / 1e9 / groups["matrix multiplies"], 1),
        "floor_share": round(floor / total, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
