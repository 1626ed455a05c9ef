"""Student speed on this machine, and the teacher/student throughput ratio measured in one run.

Usage::

    .venv/bin/python benchmarks/student.py --data DATA_DIR [--threads 2] [--teacher-llm smollm2]
        [--teacher TEACHER_DIR] [--student MODEL_DIR]

Measures, with ``torch.set_num_threads(--threads)``:

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)  # see the results: 2 contend when shared
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="passes over the data (best is kept)")
    ap.add_argument("--single", type=int, default=300, help="patients timed one by one")
    ap.add_argument("--student", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--teacher-llm", default="smollm2")
    ap.add_argument("--teacher-samples", type=int, default=32)
    ap.add_argument("--no-teacher", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    import leader
    from leader.bundle import save_bundle
    from leader.data.dataset import Dataset
    from leader.models.student import Student

    torch.set_num_threads(args.threads)
    data = Dataset.load(args.data)
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
