"""Student speed on this machine, and the teacher/student throughput ratio measured in one run.

Usage::

    .venv/bin/python benchmarks/student.py --data DATA_DIR [--threads 2] [--teacher-llm smollm2]
        [--teacher TEACHER_DIR] [--student MODEL_DIR]

Measures, with ``torch.set_num_threads(--threads)``:

- training samples/s of today's student against the student of ``--old`` (a git commit; the
  old module is read with ``git show`` into a temporary directory), in the same run and
  interleaved (old, new, old, new, ...) so that both see the same machine load: collate,
  forward, the loss (old: BCE; new: the loss its ``fit`` uses without a teacher, BCE and the
  wide path's penalties), backward and the optimiser step on batches of 32 samples, each with
  its own defaults (an old commit before ``StudentConfig``: torch's default threads, plain
  AdamW and BCE; a later one: its default student, its own loss, leader's thread default and
  fused AdamW, as today's); ``--train-steps`` steps per round, the best round kept;
- student parameters;
- batched inference: ``predict_proba`` over every sample of DATA_DIR in batches of
  ``--batch-size``, collate included (visits = samples = target visits scored per second);
- single-patient latency p50/p99: raw ``predict_proba([sample])`` and the full
  ``leader.load(MODEL_DIR).recommend(patient_json)`` path (JSON → codes → model → ranked output);
- the teacher: ``predict_proba`` on ``--teacher-samples`` samples (batch 8, prompts at the CLI's
  default max length 512) and single-sample latency; ``--teacher`` loads a trained TEACHER_DIR,
  otherwise an untrained ``--teacher-llm`` teacher (same architecture, so the same speed).

The student's speed does not depend on its weights: without ``--student`` a freshly built
student is saved to a temporary bundle. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def percentiles(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def time_each(fn, items, warmup: int = 5) -> list[float]:
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return out


def as_patient(sample) -> dict:
    """A sample as the plain JSON a caller would send (codes with their ICD version prefix)."""
    return {
        "profile": dict(sample.profile),
        "visits": [
            {"diagnoses": list(v.diagnoses), "procedures": list(v.procedures),
             "drugs": list(v.drugs)}
            for v in sample.visits
        ],
    }


OLD_COMMIT = "3b0177a"  # the student before the presets (issue 11)


def old_student_module(commit: str):
    """The StudentModule class of ``commit``, imported from a temporary copy of its file."""
    import importlib.util
    import subprocess

    from leader.models import base

    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{commit}:src/leader/models/student.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="old-student-")) / "old_student.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_student", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    registered = dict(base._REGISTRY)
    spec.loader.exec_module(module)
    base._REGISTRY.clear()
    base._REGISTRY.update(registered)  # the old class must not replace today's "student"
    return module


def training_rates(data, old_commit: str, steps: int, rounds: int) -> dict:
    """Training samples/s, old and new student, interleaved rounds (best round of each)."""
    import torch
    import torch.nn.functional as F

    from leader.models.base import start_from_frequencies
    from leader.models.student import DistillBatch, Student
    from leader.train import default_threads

    old = old_student_module(old_commit)
    train = data.samples("train")
    student = Student(data.schema)
    enc = student.encoder
    samples = [train[i : i + 32] for i in range(0, 32 * steps, 32)]
    torch.manual_seed(0)
    student.build()
    start_from_frequencies(student.module.head.bias, data)
    # today's loss as `fit` makes it: BCE plus the wide path's penalties at this cohort's size
    task = student.distill_task(len(train))

    def new_loss(module, batch):
        return task.loss(task.module, DistillBatch(batch, None))[0]

    if hasattr(old, "DEFAULTS"):  # before StudentConfig: the bare module and BCE
        old_module = old.StudentModule(
            enc.sizes(), enc.profile_sizes(), len(data.drugs), **old.DEFAULTS
        )
        old_threads, old_fused = torch.get_num_threads(), False

        def old_loss(module, batch):
            return F.binary_cross_entropy_with_logits(module(batch)[0], batch.target)
    else:  # a StudentConfig commit: its default student and the loss of its own task
        old_student = old.Student(data.schema)
        old_student.build()
        old_task = old.DistillTask(old_student, None)
        old_module, old_threads, old_fused = old_student.module, default_threads(), True

        def old_loss(module, batch):
            return old_task.loss(old_task.module, old.DistillBatch(batch, None))[0]

    setups = {
        "old": (old_module, torch.optim.AdamW(old_module.parameters(), 5e-4, fused=old_fused),
                old_threads, old_loss),
        "new": (student.module,
                torch.optim.AdamW(student.module.parameters(), 5e-4, fused=True),
                default_threads(), new_loss),
    }
    # today's student with the other thread count: what the thread default is worth here
    other = 2 if default_threads() == 1 else 1
    setups[f"new_{other}_threads"] = (*setups["new"][:2], other, new_loss)
    best = {k: 0.0 for k in setups}
    for _ in range(rounds):
        for name, (module, opt, threads, loss_of) in setups.items():
            torch.set_num_threads(threads)
            module.train()
            t = time.perf_counter()
            for batch_samples in samples:
                batch = enc.collate(batch_samples)  # collate is part of every training step
                loss = loss_of(module, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            best[name] = max(best[name], 32 * len(samples) / (time.perf_counter() - t))
    return {
        "old_commit": old_commit,
        "old_threads": setups["old"][2],
        "new_threads": setups["new"][2],
        "old_samples_per_s": best["old"],
        "new_samples_per_s": best["new"],
        "ratio_new_over_old": best["new"] / best["old"],
        f"new_{other}_threads_samples_per_s": best[f"new_{other}_threads"],
        "steps_per_round": len(samples),
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    # inference threads; see the results: 2 contend when the cores are shared
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="passes over the data (best is kept)")
    ap.add_argument("--single", type=int, default=300, help="patients timed one by one")
    ap.add_argument("--student", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--teacher-llm", default="smollm2")
    ap.add_argument("--teacher-samples", type=int, default=32)
    ap.add_argument("--no-teacher", action="store_true")
    ap.add_argument("--old", default=OLD_COMMIT, help="commit of the student to compare with")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--train-rounds", type=int, default=3)
    ap.add_argument("--no-training", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    import leader
    from leader.bundle import save_bundle
    from leader.data.dataset import Dataset
    from leader.models.student import Student

    data = Dataset.load(args.data)
    training = None
    if not args.no_training:
        training = training_rates(data, args.old, args.train_steps, args.train_rounds)
    torch.set_num_threads(args.threads)
    samples = data.samples()
    tmp = Path(tempfile.mkdtemp(prefix="bench-student-"))
    if args.student is None:
        torch.manual_seed(0)
        model = Student(data.schema)
        model.build()
        args.student = save_bundle(model, tmp / "student")
    rec = leader.load(args.student)
    student = rec.model

    visits = [len(s.visits) for s in samples]
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch threads {torch.get_num_threads()}",
        "data": {"dir": str(args.data), "samples": len(samples),
                 "mean_visits_per_sample": float(np.mean(visits))},
        "student": {"parameters": student.num_parameters()},
    }
    if training is not None:
        result["training"] = training

    best = float("inf")
    student.predict_proba(samples[: args.batch_size])  # warm-up
    for _ in range(args.repeat):
        t = time.perf_counter()
        student.predict_proba(samples, batch_size=args.batch_size)
        best = min(best, time.perf_counter() - t)
    result["student"]["batched_visits_per_s"] = len(samples) / best
    result["student"]["batch_size"] = args.batch_size

    rng = np.random.default_rng(0)
    picked = [samples[i] for i in rng.choice(len(samples), min(args.single, len(samples)), False)]
    raw = time_each(lambda s: student.predict_proba([s]), picked)
    patients = [as_patient(s) for s in picked]
    full = time_each(rec.recommend, patients)
    result["student"]["single_predict_proba"] = percentiles(raw)
    result["student"]["single_recommend"] = percentiles(full)

    if not args.no_teacher:
        from leader.models.teacher import Teacher

        if args.teacher is not None:
            teacher = leader.load(args.teacher).model
        else:
            teacher = Teacher(data.schema, {"llm": args.teacher_llm})
            teacher.build()
        few = samples[: args.teacher_samples]
        teacher.predict_proba(few[:2])  # warm-up
        t = time.perf_counter()
        teacher.predict_proba(few)
        tps = len(few) / (time.perf_counter() - t)
        single = time_each(lambda s: teacher.predict_proba([s]), few[:10], warmup=1)
        result["teacher"] = {
            "llm": teacher.config.llm,
            "max_length": teacher.config.max_length,
            "batched_visits_per_s": tps,
            "single_predict_proba": percentiles(single),
            "samples_timed": len(few),
        }
        result["student_over_teacher_throughput"] = (
            result["student"]["batched_visits_per_s"] / tps
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
