"""`leader evaluate`, `leader train-baseline` and `leader compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from leader.cli import app

console = Console()

Rounds = Annotated[int, typer.Option(help="Resampling rounds.")]
Frac = Annotated[float, typer.Option(help="Share of the split drawn per round (with replacement).")]
Seed = Annotated[int, typer.Option(help="Seed of the resamples (same seed: same draws).")]
Threshold = Annotated[float | None, typer.Option(
    help="Fixed probability cut for every model [default: each bundle's own rule].",
    show_default=False)]
Tune = Annotated[bool, typer.Option(
    "--tune-threshold", help="Tune the threshold on the val split now (best mean F1).")]


def _metric_table(result: dict) -> Table:
    from leader.evaluation import protocol_line

    table = Table(title=f"{result['model']['name']}  ({result['model']['dir']})",
                  caption=protocol_line(result["protocol"]), title_justify="left")
    for col in ("group", "visits", "Jaccard", "PRAUC", "F1", "DDI rate", "#MED"):
        table.add_column(col, justify="left" if col == "group" else "right")
    blocks = [("all", result["data"]["n_visits"], result["metrics"])]
    for g in ("first_visit", "returning"):
        blocks.append((g, result["groups"][g]["n_visits"], result["groups"][g]["metrics"]))
    for k, block in result["groups"]["by_visits"].items():
        blocks.append((f"{k} visits", block["n_visits"], block["metrics"]))
    for name, n, m in blocks:
        cells = ["-"] * 5 if m is None else [
            f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
            for k in ("jaccard", "prauc", "f1", "ddi_rate", "avg_meds")
        ]
        table.add_row(name, str(n), *cells)
    return table


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="MODEL_DIR bundle to score.")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    split: Annotated[str, typer.Option(help="Split to score: train, val or test.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Write EVAL.json here.",
                                             show_default=False)] = None,
    rounds: Rounds = 10,
    frac: Frac = 0.8,
    seed: Seed = 0,
    threshold: Threshold = None,
    tune_threshold: Tune = False,
) -> None:
    """Score one model on one split; every metric as mean ± std over seeded resamples."""
    from leader.artifacts import write_json
    from leader.evaluation import evaluate

    result = evaluate(model, data, split, rounds, frac, seed, threshold, tune_threshold)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        write_json(tmp, result)
        tmp.replace(out)
    console.print(_metric_table(result))
    if out is not None:
        console.print(f"wrote {out}")


@app.command("train-baseline")
def train_baseline_cmd(
    name: Annotated[str, typer.Argument(
        help="popular, repeat-last, logreg, retain, gamenet, safedrug or oracle.")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    out: Annotated[Path, typer.Option(help="MODEL_DIR to write.")],
    epochs: Annotated[int | None, typer.Option(help="Epochs (neural baselines).",
                                               show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (neural baselines).",
                                             show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (neural baselines).",
                                                   show_default=False)] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps.",
                                                  show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (neural baselines) [default: 42].",
                                             show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Fixed decision threshold (default: tuned on validation, best mean F1).",
        show_default=False)] = None,
    max_drugs: Annotated[int | None, typer.Option(
        help="Recommend at most this many drugs per visit.", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        help="JSON from `leader tune NAME` (neural baselines); its values win.",
        show_default=False)] = None,
    run_dir: Annotated[Path | None, typer.Option(
        help="Keep resumable checkpoints here (neural baselines).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing MODEL_DIR.")] = False,
) -> None:
    """Train a baseline and save it as a bundle (usable by evaluate, recommend and serve)."""
    from leader.models.baselines.training import train_baseline
    from leader.tune import read_config

    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "max_steps": max_steps,
                 "seed": seed}
    if config is not None:
        overrides.update(read_config(config, name)[0])
    path, metrics = train_baseline(name, data, out, overrides, threshold, force, run_dir,
                                   max_drugs)
    rule = metrics.pop("rule")
    table = Table(title=f"{name} → {path}", title_justify="left",
                  caption=f"point estimates on the whole split, threshold {rule['threshold']:g} "
                  f"({rule['threshold_rule']})")
    for col in ("split", "visits", "Jaccard", "PRAUC", "F1", "DDI rate", "#MED"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, m in metrics.items():
        table.add_row(split, str(m["n_visits"]), *(f"{m[k]:.4f}" for k in
                                                   ("jaccard", "prauc", "f1", "ddi_rate",
                                                    "avg_meds")))
    console.print(table)


@app.command("compare")
def compare_cmd(
    models: Annotated[list[Path], typer.Argument(help="MODEL_DIR bundles to compare.")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    out: Annotated[Path, typer.Option(help="REPORT_DIR to write.")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    rounds: Rounds = 10,
    frac: Frac = 0.8,
    seed: Seed = 0,
    threshold: Threshold = None,
    tune_threshold: Tune = False,
    reference: Annotated[str | None, typer.Option(
        help="Model (directory name) the others are compared with, round by round.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing REPORT_DIR.")] = False,
) -> None:
    """Evaluate several models on the same resamples; write tables, figures and report.html.

    Without --threshold / --tune-threshold each model uses its bundle's rule (tuned on
    validation when it was trained)."""
    from rich.progress import Progress

    from leader.report import compare, paired_markdown
    from leader.report import markdown as md

    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=len(models))

        def step(label: str) -> None:
            progress.update(task, description=f"evaluating {label}", advance=0)

        table = compare(data, models, out, rounds, frac, seed, threshold, tune_threshold, split,
                        force, on_model=lambda label: (step(label), progress.advance(task)),
                        reference=reference)
    typer.echo(md(table["rows"], table["protocol_line"]))  # plain: Markdown must not wrap
    if table["paired"]:
        typer.echo(paired_markdown(table["paired"], reference))
    for warning in table["warnings"]:
        typer.echo(f"warning: {warning}")
    console.print(f"wrote {out}/report.html")
