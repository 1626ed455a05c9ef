"""`leader tune MODEL`: search a model's settings on the validation split (Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leader.cli import app
from leader.commands import console
from leader.tune import tune


@app.command("tune")
def tune_cmd(
    name: Annotated[str, typer.Argument(help="student, retain, gamenet or safedrug.")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR (train and val splits).")],
    budget: Annotated[float, typer.Option(help="Minutes of search.")] = 10.0,
    out: Annotated[Path | None, typer.Option(
        help="Config file to write (default: DATA_DIR/../NAME.tuned.json).",
        show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per trial (early stopping applies).")] = 10,
    trials: Annotated[int | None, typer.Option(
        help="Stop after this many trials (default: when the budget is spent).",
        show_default=False)] = None,
    teacher: Annotated[Path | None, typer.Option(
        help="TEACHER_DIR with exported features: also tunes alpha, beta, the loss (student).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing config file.")] = False,
) -> None:
    """Tune on validation PRAUC (TPE, median pruning); `distill`/`train-baseline --config` read
    the result. The test split is never read."""
    out = out or data.parent / f"{name}.tuned.json"
    result = tune(name, data, out, budget, epochs, trials, teacher, seed, force)
    console.print(
        f"{name}: best validation PRAUC {result['best_val_prauc']:.4f} after {result['trials']} "
        f"trials ({result['pruned']} pruned, {result['seconds']:.0f} s); wrote {out}",
        highlight=False,
    )
    console.print(f"config {result['config']}", highlight=False)
