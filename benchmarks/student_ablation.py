"""Student configurations compared on the VALIDATION split (how the default preset was chosen).

    .venv/bin/python benchmarks/student_ablation.py --data DATA_DIR --epochs 10 --lr 0.003 \\
        --config '{"preset": "reference"}' --config '{}' --config '{"wide": false}' ...

Each ``--config`` (student model keys as JSON) is trained without distillation (α = β = 0) with
the same seed, epochs and learning rate, then scored on the val split: best validation PRAUC
(the early-stopping criterion), and Jaccard / F1 at the threshold tuned on validation (best
mean F1, the bundle's rule) and at 0.5. The test split is never read. One JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--config", action="append", default=[], help="student keys as JSON")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    from leader.data.dataset import Dataset
    from leader.distill import DistillOptions, fit
    from leader.evaluation import decide_threshold, split_metrics
    from leader.models.student import Student

    data = Dataset.load(args.data)
    for text in args.config or ["{}"]:
        config = json.loads(text)
        student = Student(data.schema, config)
        options = DistillOptions(alpha=0, beta=0, epochs=args.epochs, lr=args.lr, seed=args.seed,
                                 progress=False)
        started = time.perf_counter()
        result = fit(student, data, options)
        seconds = time.perf_counter() - started
        rule = decide_threshold(student, data)
        tuned = split_metrics(student, data, rule["threshold"])["val"]
        fixed = split_metrics(student, data, 0.5)["val"]
        print(json.dumps({
            "config": config, "epochs": args.epochs, "lr": args.lr,
            "val_prauc": round(result.best_score, 4), "best_step": result.best_step,
            "steps": result.steps, "threshold": rule["threshold"],
            "val_jaccard_tuned": round(tuned["jaccard"], 4), "val_f1_tuned": round(tuned["f1"], 4),
            "val_jaccard_0.5": round(fixed["jaccard"], 4), "parameters": student.num_parameters(),
            "train_seconds": round(seconds, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
