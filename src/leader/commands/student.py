"""`leader distill`: train the LEADER student from a teacher's features into a MODEL_DIR."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from leader.cli import app

console = Console()
SHOWN = ("jaccard", "f1", "prauc", "ddi_rate", "avg_meds")


@app.command("distill")
def distill_cmd(
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR (the teacher's data).")],
    out: Annotated[Path, typer.Option(help="MODEL_DIR to write (the student bundle).")],
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="TEACHER_DIR with exported features (not needed with --alpha 0).",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Weight of feature distillation (default: 0.4 MIMIC-III, 0.8 MIMIC-IV).",
            show_default=False,
        ),
    ] = None,
    beta: Annotated[
        float | None,
        typer.Option(
            help="Weight of profile alignment (default: 0.005 MIMIC-III, 0.01 MIMIC-IV).",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="InfoNCE temperature (default: the preset's).", show_default=False),
    ] = None,
    distill_loss: Annotated[
        str, typer.Option(help="Feature distillation loss: mse or cosine.")
    ] = "mse",
    standardize: Annotated[
        bool,
        typer.Option(help="Standardize teacher features per dimension (training-split stats)."),
    ] = True,
    preset: Annotated[
        str | None,
        typer.Option(help="Student preset: leader (default) or reference (the paper's code).",
                     show_default=False),
    ] = None,
    wide: Annotated[
        bool | None,
        typer.Option("--wide/--no-wide", help="Direct linear path (default: the preset's).",
                     show_default=False),
    ] = None,
    frequency_bias: Annotated[
        bool | None,
        typer.Option("--frequency-bias/--no-frequency-bias",
                     help="Output bias at training log-odds (default: the preset's).",
                     show_default=False),
    ] = None,
    set_encoder: Annotated[
        str | None,
        typer.Option(help="Per-visit code sets: transformer or mean (default: the preset's).",
                     show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="JSON from `leader tune student`: model keys and training options.",
                     show_default=False),
    ] = None,
    no_profile: Annotated[
        bool,
        typer.Option(
            "--no-profile", help="First visits get a learned 'no record' vector, not the profile."
        ),
    ] = False,
    online: Annotated[
        bool,
        typer.Option(
            "--online", help="Run the teacher inside each step instead of exported features."
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 50,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimiser steps.", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW; the reference: 5e-4).")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    patience: Annotated[int, typer.Option(help="Validations without a better PRAUC.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 42,
    max_visits: Annotated[int, typer.Option(help="Last K visits the student reads.")] = 10,
    threshold: Annotated[
        float | None,
        typer.Option(help="Fixed decision threshold (default: tuned on validation, best mean F1).",
                     show_default=False),
    ] = None,
    max_drugs: Annotated[
        int | None,
        typer.Option(help="Recommend at most this many drugs per visit.", show_default=False),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch threads (default: 1, or OMP_NUM_THREADS).", show_default=False),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Replace an existing MODEL_DIR / discard a checkpoint of other options."),
    ] = False,
) -> None:
    """Distill the LEADER student; rerun the same command to resume after a kill.

    --config (from `leader tune student`) sets the model keys and training options it holds;
    its values win over the options given here."""
    from leader.distill import DistillOptions, distill
    from leader.tune import read_config

    tuned_model, tuned_options = read_config(config, "student") if config else ({}, {})
    options = DistillOptions(
        alpha=alpha,
        beta=beta,
        temperature=temperature,
        distill_loss=distill_loss,
        standardize=standardize,
        online=online,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        threshold=threshold,
        max_drugs=max_drugs,
        threads=threads,
    )
    options = replace(options, **tuned_options)  # the tuned values win
    given = {"preset": preset, "wide": wide, "frequency_bias": frequency_bias,
             "set_encoder": set_encoder}
    model_config = {
        **tuned_model,
        "max_visits": max_visits,
        "use_profile": not no_profile,
        **{k: v for k, v in given.items() if v is not None},
    }
    result = distill(data, out, teacher, options, model_config, force=force)
    console.print(
        f"student in {result.out}: {result.parameters:,} parameters, α {result.options.alpha}, "
        f"β {result.options.beta}, best validation PRAUC {result.train.best_score:.4f} at step "
        f"{result.train.best_step} of {result.train.steps}",
        highlight=False,
    )
    console.print(metrics_table(result.metrics, result.teacher_metrics, result.rule))


def metrics_table(student: dict, teacher: dict | None, rule: dict) -> Table:
    """The student's validation and test metrics, the teacher's (as saved in its bundle) beside."""
    title = f"metrics at threshold {rule['threshold']:g} ({rule['threshold_rule']})"
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    columns = [
        ("student val", student.get("val") or {}),
        ("student test", student.get("test") or {}),
    ]
    for split in ("val", "test"):
        if (teacher or {}).get(split):
            columns.append((f"teacher {split}", teacher[split]))
    for name, _ in columns:
        table.add_column(name, justify="right")
    for metric in SHOWN:
        cells = [
            f"{values[metric]:.4f}" if isinstance(values.get(metric), float) else "-"
            for _, values in columns
        ]
        table.add_row(metric, *cells)
    return table
