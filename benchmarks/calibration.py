"""ECE before and after calibration on a synthetic MIMIC-III cohort (`leader compare`).

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/calibration.py \
        --work /tmp/leader-cal --patients 3000 --epochs 10 --student-steps 60

synth (seed 1) → prepare → train logreg, retain and the student without a teacher
(`distill --alpha 0 --beta 0`: no LLM on this CPU) → `leader compare --calibration temperature`
and `--calibration isotonic` (each fitted on the val split, ECE measured on test). Prints the
calibration table of each report; paste them into BENCHMARKS.md with the command line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compare import run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/leader-cal"))
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--student-steps", type=int, default=None,
                    help="stop the student after N steps (it is the slow one on a shared CPU)")
    args = ap.parse_args()
    w = args.work
    run("synth", "--format", "mimic3", "--patients", str(args.patients), "--out", str(w / "raw"),
        "--seed", "1", "--force")
    run("prepare", "--source", "mimic3", "--root", str(w / "raw"), "--out", str(w / "data"),
        "--force")
    data, models = str(w / "data"), w / "models"
    epochs = ["--epochs", str(args.epochs)]
    run("train-baseline", "logreg", "--data", data, "--out", str(models / "logreg"), "--force")
    run("train-baseline", "retain", "--data", data, "--out", str(models / "retain"), "--force",
        *epochs)
    steps = ["--max-steps", str(args.student_steps)] if args.student_steps else []
    run("distill", "--data", data, "--out", str(models / "student"), "--alpha", "0", "--beta",
        "0", "--force", *epochs, *steps)
    dirs = [str(models / m) for m in ("logreg", "retain", "student")]
    for method in ("temperature", "isotonic"):
        started = time.perf_counter()
        out = w / f"report-{method}"
        run("compare", "--data", data, *dirs, "--out", str(out), "--calibration", method,
            "--force")
        print(f"compare --calibration {method}: {time.perf_counter() - started:.0f} s")
        text = (out / "table.md").read_text()
        print(text[text.index("## Calibration"):], flush=True)


if __name__ == "__main__":
    main()
