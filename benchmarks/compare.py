"""The comparison table on (a) the bundled MIMIC-III demo and (b) synthetic MIMIC-III data.

    .venv/bin/python benchmarks/compare.py --work /tmp/leader-bench --patients 5000 --epochs 10

`--generator additive|clinical` picks the synthetic generator (`leader synth --generator`);
each writes under WORK/synth-GENERATOR. The table's last column splits Jaccard into first
visits (only the profile and the current codes to go on) and returning visits.

For each cohort: prepare → train every baseline (+ the student with --alpha 0 when
`leader distill` exists, + oracle on synthetic data) → `leader compare` (10 resamples of 80%
with replacement, seed 0, threshold 0.5). Prints each table.md; paste into
benchmarks/results/compare.md with the command line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

LEADER = str(Path(sys.executable).parent / "leader")
NEURAL = ("retain", "gamenet", "safedrug")


def run(*args: str) -> None:
    print("$ leader " + " ".join(args), flush=True)
    subprocess.run([LEADER, *args], check=True)


def cohort(data: Path, models: Path, epochs: int, lr: float, oracle: bool,
           neural: bool = True) -> list[Path]:
    dirs = []
    for name in ("popular", "repeat-last", "logreg", *(NEURAL if neural else ())):
        extra = ["--epochs", str(epochs), "--lr", str(lr)] if name in NEURAL else []
        started = time.perf_counter()
        run("train-baseline", name, "--data", str(data), "--out", str(models / name), "--force",
            *extra)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        dirs.append(models / name)
    try:
        run("distill", "--data", str(data), "--out", str(models / "student-no-distill"),
            "--alpha", "0", "--beta", "0", "--epochs", str(epochs), "--force")
        dirs.append(models / "student-no-distill")
    except subprocess.CalledProcessError:
        print("student not available: left out", flush=True)
    if oracle:
        run("train-baseline", "oracle", "--data", str(data), "--out", str(models / "oracle"),
            "--force")
        dirs.append(models / "oracle")
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/leader-bench"))
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--only", choices=("demo", "synth"), default=None)
    ap.add_argument("--generator", choices=("additive", "clinical"), default="clinical")
    ap.add_argument("--no-neural", action="store_true", help="leave out " + ", ".join(NEURAL))
    args = ap.parse_args()
    w = args.work
    if args.only in (None, "demo"):
        run("prepare", "--source", "mimic3", "--root", "demo", "--out", str(w / "demo/data"),
            "--force")
        dirs = cohort(w / "demo/data", w / "demo/models", args.epochs, args.lr, oracle=False)
        run("compare", "--data", str(w / "demo/data"), *map(str, dirs), "--out",
            str(w / "demo/report"), "--force")
    if args.only in (None, "synth"):
        s = w / f"synth-{args.generator}"
        run("synth", "--format", "mimic3", "--patients", str(args.patients), "--out",
            str(s / "raw"), "--seed", "0", "--generator", args.generator, "--force")
        run("prepare", "--source", "mimic3", "--root", str(s / "raw"), "--out",
            str(s / "data"), "--force")
        dirs = cohort(s / "data", s / "models", args.epochs, args.lr, oracle=True,
                      neural=not args.no_neural)
        run("compare", "--data", str(s / "data"), *map(str, dirs), "--out",
            str(s / "report"), "--force")


if __name__ == "__main__":
    main()
