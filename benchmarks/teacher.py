"""Teacher speed, old path vs new defaults, on the same prompts: tokens/s, samples/s, peak memory.

Usage::

    .venv/bin/python benchmarks/teacher.py --data DATA_DIR [--llm smollm2] \
        [--train-samples 48] [--export-samples 64] [--configs old,new,new-k4]

Every configuration runs in its own child process (so that its peak RSS is its own) on the SAME
prompts: the first ``--train-samples`` training samples and the first ``--export-samples``
samples of the data, built with the new budget (2,048 capped at the backbone's positions, so no
prompt is shortened here). Configurations:

- ``old``: the path before issue 10: fp32, prompts re-tokenized at every batch, random batches
  padded to their longest prompt (no bucketing, no token cap), LoRA on all layers, peft's own
  dropout (no ``fast_paths``), export in data order in batches of 16; at ``--old-batch-size``
  (default 2: the old default of 8 does not fit real-length prompts in memory).
- ``new``: every new default (auto dtype, 1 thread, length buckets, the token cap, all layers,
  ``fast_paths``).
- ``new-k4``: the new defaults with ``--train-layers 4``; the layer-cache fill (one forward of
  the lower blocks per prompt) is timed separately and also amortised over one epoch.
- ``new-plain``: the new defaults without ``fast_paths`` (peft's dropout and casts, bf16 LoRA
  inputs copied to fp32, transformers' SDPA in the backbone's precision).
- ``new-ckpt``, ``new-fp16``, ``new-4bit``, ``new-8bit``: gradient checkpointing, an fp16
  backbone with loss scaling, QLoRA 4/8-bit (GPU only; used by ``benchmarks/gpu.sh``).

``--select longest`` trains on the split's N longest prompts instead of its first N (the
synthetic prompts are shorter than real MIMIC-IV ones).

Training: all training samples once through the loop (one epoch of the subset; ``--epochs``
more); the first optimiser step is a warm-up and is not counted.

Quality (the issue's "new defaults within resampling noise of the old path"): with
``--val-samples M`` each configuration, after its training, scores the first M validation
visits the same way; the summary gives each one's validation PRAUC with its std over 10
resamples of 80%, and the paired difference new - old with a 95% bootstrap interval. E.g.
``--configs old,new --train-samples 256 --epochs 2 --val-samples 136 --old-grad-accum 4
--parallel`` (the same 8 samples per optimiser step in both; both at once, one core each: the
timings of such a run are not comparable, the PRAUC is).

Per core or the whole machine: by default every configuration runs one process with one torch
thread (per-core throughput, the strictest comparison). ``--old-threads 2 --procs 2`` measures
what a 2-core machine gives each path instead: the old path with 2 torch threads (torch's
default before issue 10: one per core) against the new configurations under ``torchrun
--nproc_per_node 2`` (one thread per process, each process half the batches and half the
export; the way the docs tell users to fill several cores); ``--threads 2`` instead of
``--procs 2`` runs them in one process with 2 threads. Tokens and CPU seconds are then summed
over the processes and the wall time is the slowest process's; peak RSS is per process.

Wall-clock AND process CPU seconds are reported: on a shared machine the CPU figures are the
fairer comparison. Prints one JSON object with ratios new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = {
    "old": {"dtype": "fp32", "max_batch_tokens": None, "train_layers": None, "fast_paths": False},
    "new": {},
    "new-k4": {"train_layers": 4},
    "new-plain": {"fast_paths": False},  # the new defaults without models/fast_paths.py
    "new-ckpt": {"gradient_checkpointing": "on"},
    "new-fp16": {"dtype": "fp16"},  # GPUs without bf16; the loop scales the loss
    "new-4bit": {"quantize": "4bit"},  # GPU only (bitsandbytes)
    "new-8bit": {"quantize": "8bit"},  # GPU only (bitsandbytes)
}


class OldTask:
    """The pre-issue-10 task: re-tokenizes text at every batch, no lengths (so no bucketing)."""

    def __init__(self, task):
        self.inner, self.module = task, task.module

    def collate(self, samples):
        from leader.data.samples import multi_hot
        from leader.models.teacher import PromptBatch

        texts = [self.inner.prompt(s).text for s in samples]
        enc = self.inner.tokenizer(texts, padding=True, return_tensors="pt")
        if __import__("torch").is_grad_enabled():
            self.inner.tokens["real"] += int(enc["attention_mask"].sum())
            self.inner.tokens["padded"] += enc["attention_mask"].numel()
        target = multi_hot([s.target for s in samples], self.inner.drugs)
        return PromptBatch(enc["input_ids"], enc["attention_mask"], target)

    def loss(self, module, batch):
        return self.inner.loss(module, batch)

    def predict(self, module, batch):
        return self.inner.predict(module, batch)

    def targets(self, batch):
        return batch.target


def cpu_seconds() -> float:
    """CPU time of this process: on a shared machine a fairer clock than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(args: argparse.Namespace, name: str) -> dict:
    import numpy as np
    import torch

    from leader.data.dataset import Dataset
    from leader.distributed import ensure_process_group
    from leader.models.teacher import Teacher
    from leader.train import FitContext, train

    _, processes = ensure_process_group()
    data = Dataset.load(args.data)
    export_samples = data.samples()[: args.export_samples]
    batch_size = args.old_batch_size if name == "old" else args.batch_size
    config = {"llm": args.llm, **CONFIGS[name],
              "train": {"batch_size": batch_size, "epochs": args.epochs, "seed": args.seed,
                        "grad_accum": args.old_grad_accum if name == "old" else 1,
                        "threads": args.old_threads if name == "old" else args.threads}}
    t0 = time.perf_counter()
    model = Teacher(data.schema, config)
    model.build()
    load_s = time.perf_counter() - t0
    task = model.task()
    train_samples = data.samples("train")
    if args.select == "longest":  # real MIMIC-IV prompts are longer than the synthetic ones
        train_samples = sorted(train_samples, key=lambda s: -len(task.prompt(s).input_ids))
    train_samples = train_samples[: args.train_samples]
    for s in (*train_samples, *export_samples):
        task.prompt(s)
    estimate = model.memory_estimate(train_samples)
    cache_s = cache_cpu = 0.0
    if model.module.split is not None:
        from leader.models.layer_cache import LayerCache

        task.cache = LayerCache(None, "bench")
        t1, c1 = time.perf_counter(), cpu_seconds()
        task.fill_cache("train", train_samples, model.config.predict_batch_size)
        cache_s, cache_cpu = time.perf_counter() - t1, cpu_seconds() - c1
    loop_task = OldTask(task) if name == "old" else task
    sizes: list[tuple[int, int]] = []
    stamps: list[float] = []

    cpu: list[float] = []

    def on_step(_step: int) -> None:
        stamps.append(time.perf_counter())
        cpu.append(cpu_seconds())
        sizes.append((task.tokens["padded"], task.tokens["real"]))

    task.tokens = {"real": 0, "padded": 0}
    start, start_cpu = time.perf_counter(), cpu_seconds()
    train(loop_task, train_samples, [], model.config.train,
          FitContext(progress=False, on_step=on_step))
    total_s, total_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    if len(stamps) < 2:
        raise SystemExit(f"{name}: --train-samples {len(train_samples)} made fewer than two "
                         "optimiser steps; the first is a warm-up, so nothing was timed")
    seconds = stamps[-1] - stamps[0]  # steps 2..n: the first is a warm-up
    cpu_s = cpu[-1] - cpu[0]
    padded = sizes[-1][0] - sizes[0][0]
    real = sizes[-1][1] - sizes[0][1]
    if processes > 1:  # the machine's throughput: every process's tokens over the slowest's time
        seconds, total_s, cache_s = (_across_ranks(v, "max") for v in (seconds, total_s, cache_s))
        cpu_s, total_cpu, cache_cpu, padded, real = (
            _across_ranks(v, "sum") for v in (cpu_s, total_cpu, cache_cpu, padded, real))
    quality = {}
    if args.val_samples:  # the same scoring for every configuration: the new task's batches
        from leader.data.samples import multi_hot
        from leader.metrics import average_precision
        from leader.train import predict_in_batches

        val = data.samples("val")[: args.val_samples]
        if model.module.split is not None:  # the layer cache is the training one
            task.fill_cache("val", val, model.config.predict_batch_size)
        probs = predict_in_batches(task, val, model.config.predict_batch_size)
        ap = average_precision(multi_hot([s.target for s in val], data.drugs).numpy() > 0, probs)
        quality = {"val_visits": len(val), "val_prauc": round(float(np.nanmean(ap)), 4),
                   "val_ap": [None if np.isnan(a) else round(float(a), 5) for a in ap]}
    task.cache = None

    t2, c2 = time.perf_counter(), cpu_seconds()
    if name == "old":  # the old export: data order, batches of 16, re-tokenized
        with torch.no_grad():
            model.module.eval()
            device = next(model.module.parameters()).device
            for i in range(0, len(export_samples), 16):
                b = loop_task.collate(export_samples[i : i + 16]).to(device)
                model.module(b.input_ids, b.attention_mask)
            if device.type == "cuda":  # its work is asynchronous: done before the clock stops
                torch.cuda.synchronize(device)
    else:  # shared between the processes of a torchrun child, as train-teacher does
        from leader.distributed import encode_shared

        encode_shared(model, export_samples)
    export_s, export_cpu = time.perf_counter() - t2, cpu_seconds() - c2
    if processes > 1:  # encode_shared() split the export between the processes
        export_s, export_cpu = _across_ranks(export_s, "max"), _across_ranks(export_cpu, "sum")
    lengths = [len(task.prompt(s).input_ids) for s in train_samples]
    return {
        "config": name,
        "dtype": model.dtype,
        "threads": torch.get_num_threads(),
        "processes": processes,
        "batch_size": batch_size,
        "max_batch_tokens": model.config.max_batch_tokens,
        "train_layers": model.config.train_layers,
        "max_length": model.config.max_length,
        "prompt_tokens_p50_max": [int(np.median(lengths)), max(lengths)],
        "load_build_s": round(load_s, 1),
        "train_steps_timed": len(stamps) - 1,
        "train_s": round(total_s, 1),
        "train_real_tokens_per_s": round(real / seconds, 1),
        "train_padded_tokens_per_s": round(padded / seconds, 1),
        "train_real_tokens_per_cpu_s": round(real / cpu_s, 1),
        "padding_share": round(1 - real / padded, 3) if padded else None,
        "layer_cache_fill_s": round(cache_s, 1),
        "layer_cache_fill_cpu_s": round(cache_cpu, 1),
        "train_epoch_s_incl_cache": round(total_s + cache_s, 1),
        "train_epoch_cpu_s_incl_cache": round(total_cpu + cache_cpu, 1),
        "export_samples": len(export_samples),
        "export_samples_per_s": round(len(export_samples) / export_s, 3),
        "export_samples_per_cpu_s": round(len(export_samples) / export_cpu, 3),
        "memory_estimate_gib": estimate.total_gib,
        "peak_rss_gib": round(  # per process: the largest
            _across_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "max") / 2**20, 2),
        "peak_gpu_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if torch.cuda.is_available() else None
        ),
        **quality,
    }


def _across_ranks(value: float, how: str) -> float:
    """``value`` summed or maxed over the processes of a torchrun child (itself in one)."""
    import torch

    from leader.distributed import world

    if world()[1] == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":  # NCCL reduces GPU tensors only
        t = t.cuda()
    op = torch.distributed.ReduceOp.SUM if how == "sum" else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(t, op=op)
    return t.item()


def paired_prauc(old: list, new: list, resamples: int = 1000, seed: int = 0,
                 labels: tuple[str, str] = ("old", "new")) -> dict:
    """Validation PRAUC of both on the same visits: each one's std over 10 resamples of 80%
    (the comparison table's protocol) and the paired difference new - old with a 95% interval
    over bootstrap resamples of the visits; ``labels`` name the two in the result."""
    import numpy as np

    a, b = np.array(old, dtype=float), np.array(new, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    rng = np.random.default_rng(seed)
    n = len(a)
    subs = [rng.choice(n, int(0.8 * n), replace=True) for _ in range(10)]
    boot = np.array([(b[i] - a[i]).mean() for i in rng.integers(0, n, (resamples, n))])
    return {
        "visits": int(n),
        labels[0]: [round(a.mean(), 4), round(float(np.std([a[i].mean() for i in subs])), 4)],
        labels[1]: [round(b.mean(), 4), round(float(np.std([b[i].mean() for i in subs])), 4)],
        f"{labels[1]}_minus_{labels[0]}": round(float((b - a).mean()), 4),
        "interval_95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])],
    }


def pair_runs(first: Path, second: Path) -> dict:
    """Two earlier outputs (e.g. two seeds) paired config by config (B - A), and new - old with
    each path's per-visit AP averaged over both runs."""
    a, b = (json.loads(p.read_text())["runs"] for p in (first, second))
    out = {name: paired_prauc(a[name]["val_ap"], b[name]["val_ap"], labels=("A", "B"))
           for name in a if name in b and "val_ap" in a[name]}
    if {"old", "new"} <= out.keys():
        mean_ap = {name: [(x + y) / 2 for x, y in
                          zip(a[name]["val_ap"], b[name]["val_ap"], strict=True)]
                   for name in ("old", "new")}
        out["new - old, both runs averaged"] = paired_prauc(mean_ap["old"], mean_ap["new"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--train-samples", type=int, default=48)
    ap.add_argument("--export-samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--old-batch-size", type=int, default=2)
    ap.add_argument("--old-grad-accum", type=int, default=1,
                    help="old path: batches per optimiser step (4 x 2 = the new batch of 8)")
    ap.add_argument("--configs", default="old,new,new-k4")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the training subset")
    ap.add_argument("--val-samples", type=int, default=0,
                    help="score this many validation visits after training (PRAUC, paired)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the configurations at the same time (for PRAUC, not timings)")
    ap.add_argument("--seed", type=int, default=0,
                    help="data order, LoRA and drug-layer initialisation (the same in each config)")
    ap.add_argument("--pair", nargs=2, type=Path, metavar=("A.json", "B.json"),
                    help="no training: pair the validation APs of two earlier outputs (e.g. two "
                    "seeds), config by config (B - A), to size the run-to-run noise")
    ap.add_argument("--old-threads", type=int, default=1,
                    help="torch threads of the old path (before issue 10: one per core)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the new configurations (default: theirs, 1)")
    ap.add_argument("--procs", type=int, default=1,
                    help="run every new configuration under torchrun with this many processes")
    ap.add_argument("--select", choices=("first", "longest"), default="first",
                    help="which training prompts: the first N of the split or its N longest")
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pair:
        print(json.dumps(pair_runs(*args.pair), indent=2))
        return
    if args.only:
        result = run_one(args, args.only)
        from leader.distributed import is_main

        if is_main():  # one line from a torchrun child
            print(json.dumps(result))
        return
    results = {}
    names = args.configs.split(",")
    procs = {}
    for name in names:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", name]
        if args.procs > 1 and name != "old":
            cmd[1:1] = ["-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", str(args.procs)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        if not args.parallel:
            procs[name].wait()
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
        results[name] = json.loads(stdout.strip().splitlines()[-1])
        print(json.dumps({k: v for k, v in results[name].items() if k != "val_ap"}),
              file=sys.stderr)
    summary: dict = {"llm": args.llm, "data": str(args.data), "runs": results, "ratios": {}}
    if "old" in results:
        old = results["old"]
        for name, r in results.items():
            if name == "old":
                continue
            summary["ratios"][f"{name}/old"] = {
                key: round(r[key] / old[key], 2)
                for key in ("train_real_tokens_per_s", "train_real_tokens_per_cpu_s",
                            "export_samples_per_s", "export_samples_per_cpu_s")
            } | {  # a whole epoch of the subset, the layer-cache fill included: old / new time
                key: round(old[key] / r[key], 2)
                for key in ("train_epoch_s_incl_cache", "train_epoch_cpu_s_incl_cache")
            }
        if "val_ap" in old:
            summary["val_prauc_paired"] = {
                f"{name}/old": paired_prauc(old["val_ap"], r["val_ap"])
                for name, r in results.items() if name != "old" and "val_ap" in r
            }
    print(json.dumps(summary, indent=2))  # with each run's per-visit AP (val_ap): pair offline


if __name__ == "__main__":
    main()
