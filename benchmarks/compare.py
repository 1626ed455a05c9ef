"""The comparison table on (a) the bundled MIMIC-III demo and (b) synthetic MIMIC-III data.

    .venv/bin/python benchmarks/compare.py --work /tmp/leader-bench --patients 5000 --epochs 10

`--generator additive|clinical` picks the synthetic generator (`leader synth --generator`);
each writes under WORK/synth-GENERATOR. The table's last column splits Jaccard into first
visits (only the profile and the current codes to go on) and returning visits.

For each cohort: prepare → train every baseline (logreg also with an L1 penalty, its C chosen
on validation; + the student with --alpha 0 when
`leader distill` exists, + oracle on synthetic data) → `leader compare` (10 resamples of 80%
with replacement, seed 0), once with each bundle's own threshold rule (tuned on validation when
trained) and paired differences against --reference, once at the fixed threshold 0.5.
``--variants`` adds student ablation rows (see docs/student.md). Prints each table.md; paste
into benchmarks/results/compare.md with the command line.

With a trained teacher (issues 10/11), on the teacher's own prepared cohort:

    .venv/bin/python benchmarks/compare.py --work W --cohort DATA_DIR --teacher TEACHER_DIR

adds the teacher's row and the distilled student, α and the feature loss chosen on validation
PRAUC from ``--alphas`` × ``--distill-losses`` (β and everything else at the student's
defaults); the undistilled student is the same student with α = β = 0. ``--seeds 1 2 3``
then retrains that pair (undistilled; distilled with the chosen α and loss) at each further
training seed (`leader distill --seed`: initialisation and data order) and prints the gain
per seed on the same resamples, so that a gain can be told apart from the spread between
training runs as well as from that between test resamples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LEADER = str(Path(sys.executable).parent / "leader")
NEURAL = ("retain", "gamenet", "safedrug")
# student ablation rows: name -> extra `leader distill` options
VARIANTS = {
    "reference": ("--preset", "reference"),
    "no-wide": ("--no-wide",),
    "no-frequency-bias": ("--no-frequency-bias",),
    "transformer-sets": ("--set-encoder", "transformer"),
    "no-hierarchy": ("--no-hierarchy",),
    "no-group-presence": ("--no-group-presence",),
    "wide-l2": ("--wide-l1", "0", "--wide-l2", "1e-3"),
}
LOGREG_L1_C = (0.3, 0.5, 1.0)  # the L1 logistic regression's C grid, chosen on validation


REUSE = False  # --reuse: keep a model directory that a previous run finished


def run(*args: str) -> None:
    if REUSE and "--out" in args and args[0] in ("train-baseline", "distill"):
        out = Path(args[args.index("--out") + 1])
        if (out / "manifest.json").is_file():
            print(f"reusing {out}", flush=True)
            return
    print("$ leader " + " ".join(args), flush=True)
    subprocess.run([LEADER, *args], check=True)


NO_DISTILL = ("--alpha", "0", "--beta", "0")  # the undistilled student: no teacher, no alignment


def student(data: Path, out: Path, epochs: int, lr: float, *options: str) -> Path:
    """`leader distill` with the options every student of this benchmark shares; returns OUT."""
    run("distill", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--lr",
        str(lr), "--force", *options)
    return out


def taught(teacher: Path, loss: str, alpha: float) -> tuple[str, ...]:
    """The `leader distill` options of feature distillation from TEACHER."""
    return ("--teacher", str(teacher), "--alpha", str(alpha), "--distill-loss", loss)


def val_prauc(model_dir: Path) -> float:
    return float(json.loads((model_dir / "metrics.json").read_text())["val"]["prauc"])


def distilled(data: Path, models: Path, teacher: Path, alphas: list[float], losses: list[str],
              epochs: int, student_lr: float) -> tuple[Path, str, float]:
    """One distilled student per (α, feature loss); the best on validation PRAUC (never test)."""
    tried = {}
    for loss in losses:
        for alpha in alphas:
            started = time.perf_counter()
            out = student(data, models / f"student-{loss}-alpha-{alpha:g}", epochs, student_lr,
                          *taught(teacher, loss, alpha))
            tried[out, loss, alpha] = val_prauc(out)
            print(f"{out.name}: trained in {time.perf_counter() - started:.0f} s, "
                  f"val PRAUC {tried[out, loss, alpha]:.4f}", flush=True)
    best = max(tried, key=tried.get)
    print(f"distilled student chosen on validation: {best[0].name}", flush=True)
    return best


def seed_pairs(data: Path, models: Path, teacher: Path, loss: str, alpha: float,
               seeds: list[int], epochs: int, student_lr: float) -> list[tuple[Path, Path]]:
    """The undistilled and the chosen distilled student retrained at each further seed."""
    return [(student(data, models / f"student-no-distill-seed-{seed}", epochs, student_lr,
                     *NO_DISTILL, "--seed", str(seed)),
             student(data, models / f"student-{loss}-alpha-{alpha:g}-seed-{seed}", epochs,
                     student_lr, *taught(teacher, loss, alpha), "--seed", str(seed)))
            for seed in seeds]


def print_seed_gains(table: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Distilled − undistilled per seed: differences of means over the same resamples."""
    rows = {row["model"]: row for row in json.loads(table.read_text())["rows"]}
    print("\n| pair | Δ Jaccard | Δ PRAUC | Δ Jaccard first visit | val PRAUC undistilled / "
          "distilled |\n|---|---|---|---|---|")
    gains = []
    for plain, distilled_dir in pairs:
        a, b = rows[plain.name], rows[distilled_dir.name]
        gain = (b["jaccard"]["mean"] - a["jaccard"]["mean"],
                b["prauc"]["mean"] - a["prauc"]["mean"],
                b["first_visit_jaccard"] - a["first_visit_jaccard"])
        gains.append(gain)
        print(f"| {distilled_dir.name} − {plain.name} | {gain[0]:+.4f} | {gain[1]:+.4f} | "
              f"{gain[2]:+.4f} | {val_prauc(plain):.4f} / {val_prauc(distilled_dir):.4f} |")
    columns = list(zip(*gains, strict=True))
    mean = [statistics.fmean(c) for c in columns]
    std = [statistics.stdev(c) if len(c) > 1 else float("nan") for c in columns]
    print(f"| mean ± std over {len(pairs)} seeds | "
          + " | ".join(f"{m:+.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True)) + " | |")


def logreg_l1(data: Path, models: Path) -> Path:
    """The L1 logistic regression (sparse weights: a stronger baseline than the lineage's L2
    one), its C chosen on validation PRAUC (never test); the row is named with its C."""
    models.mkdir(parents=True, exist_ok=True)
    tried = {}
    for c in LOGREG_L1_C:
        config = models / f"logreg-l1-C{c:g}.json"
        config.write_text(json.dumps({"penalty": "l1", "C": c}))
        out = models / f"logreg-l1-C{c:g}"
        run("train-baseline", "logreg", "--data", str(data), "--out", str(out), "--config",
            str(config), "--force")
        tried[out] = val_prauc(out)
    best = max(tried, key=tried.get)
    print("logreg-l1, val PRAUC by C: " + ", ".join(f"{p.name} {v:.4f}" for p, v in
          tried.items()) + f"; chosen {best.name}", flush=True)
    return best


def cohort(data: Path, models: Path, epochs: int, lr: float, oracle: bool,
           neural: bool = True, student_lr: float = 3e-3,
           variants: tuple[str, ...] = ()) -> list[Path]:
    dirs = []
    for name in ("popular", "repeat-last", "logreg", *(NEURAL if neural else ())):
        extra = ["--epochs", str(epochs), "--lr", str(lr)] if name in NEURAL else []
        started = time.perf_counter()
        run("train-baseline", name, "--data", str(data), "--out", str(models / name), "--force",
            *extra)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        dirs.append(models / name)
        if name == "logreg":
            dirs.append(logreg_l1(data, models))
    for variant in ("", *variants):
        name = "student-no-distill" + (f"-{variant}" if variant else "")
        try:
            started = time.perf_counter()
            dirs.append(student(data, models / name, epochs, student_lr, *NO_DISTILL,
                                *VARIANTS.get(variant, ())))
            print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        except subprocess.CalledProcessError:
            print(f"{name} not available: left out", flush=True)
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
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--variants", nargs="*", choices=tuple(VARIANTS), default=[])
    ap.add_argument("--reference", default="logreg", help="model of the paired differences")
    ap.add_argument("--cohort", type=Path, default=None,
                    help="a prepared DATA_DIR (the teacher's) instead of demo + synth")
    ap.add_argument("--teacher", type=Path, default=None, help="TEACHER_DIR trained on --cohort")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.4, 1.0])
    ap.add_argument("--distill-losses", nargs="+", choices=("mse", "cosine"),
                    default=["mse", "cosine"])
    ap.add_argument("--reuse", action="store_true",
                    help="keep models a previous run with the same options finished")
    ap.add_argument("--seeds", type=int, nargs="*", default=[],
                    help="with --teacher: retrain the undistilled and the chosen distilled "
                         "student at these further seeds and print the gain per seed")
    args = ap.parse_args()
    if args.seeds and (args.teacher is None or args.cohort is None):
        ap.error("--seeds needs --cohort and --teacher (it retrains the distilled student)")
    global REUSE
    REUSE = args.reuse
    w = args.work
    if args.cohort is not None:
        data, models = args.cohort, w / "models"
        dirs = cohort(data, models, args.epochs, args.lr, oracle=True,
                      neural=not args.no_neural, student_lr=args.student_lr,
                      variants=tuple(args.variants))
        if args.teacher is not None:
            # the profile alignment alone (β at its default, α = 0): what is left without the
            # teacher's features
            dirs += [student(data, models / "student-beta-only", args.epochs, args.student_lr,
                             "--alpha", "0")]
            best, loss, alpha = distilled(data, models, args.teacher, args.alphas,
                                          args.distill_losses, args.epochs, args.student_lr)
            dirs += [best, args.teacher]
        run("compare", "--data", str(data), *map(str, dirs), "--out", str(w / "report"),
            "--force", "--reference", args.reference)
        if args.teacher is not None and args.seeds:
            pairs = [(models / "student-no-distill", best),
                     *seed_pairs(data, models, args.teacher, loss, alpha, args.seeds,
                                 args.epochs, args.student_lr)]
            run("compare", "--data", str(data), *map(str, (d for pair in pairs for d in pair)),
                "--out", str(w / "report-seeds"), "--force", "--reference", "student-no-distill")
            print_seed_gains(w / "report-seeds" / "table.json", pairs)
        return
    if args.only in (None, "demo"):
        run("prepare", "--source", "mimic3", "--root", "demo", "--out", str(w / "demo/data"),
            "--force")
        dirs = cohort(w / "demo/data", w / "demo/models", args.epochs, args.lr, oracle=False,
                      student_lr=args.student_lr)
        run("compare", "--data", str(w / "demo/data"), *map(str, dirs), "--out",
            str(w / "demo/report"), "--force")
    if args.only in (None, "synth"):
        s = w / f"synth-{args.generator}"
        run("synth", "--format", "mimic3", "--patients", str(args.patients), "--out",
            str(s / "raw"), "--seed", "0", "--generator", args.generator, "--force")
        run("prepare", "--source", "mimic3", "--root", str(s / "raw"), "--out",
            str(s / "data"), "--force")
        dirs = cohort(s / "data", s / "models", args.epochs, args.lr, oracle=True,
                      neural=not args.no_neural, student_lr=args.student_lr,
                      variants=tuple(args.variants))
        run("compare", "--data", str(s / "data"), *map(str, dirs), "--out",
            str(s / "report"), "--force", "--reference", args.reference)
        run("compare", "--data", str(s / "data"), *map(str, dirs), "--out",
            str(s / "report-fixed-0.5"), "--force", "--threshold", "0.5")


if __name__ == "__main__":
    main()
