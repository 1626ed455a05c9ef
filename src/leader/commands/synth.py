"""`leader synth`: write synthetic raw MIMIC tables with planted drug structure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from leader.cli import app
from leader.data.synth import synthesize
from leader.data.synth_clinical import ClinicalConfig
from leader.errors import LeaderError


@app.command("synth")
def synth(
    fmt: Annotated[str, typer.Option(
        "--format", help="Raw layout to write: mimic3, mimic4 or omop.")],
    patients: Annotated[int, typer.Option(help="Number of patients to generate.")],
    out: Annotated[Path, typer.Option(help="RAW_DIR to create.")],
    seed: Annotated[int, typer.Option(help="Seed of the generator and of the data.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RAW_DIR.")] = False,
    generator: Annotated[str, typer.Option(
        help="clinical (prescribing rules) or additive (the original model, same bytes).")
    ] = "clinical",
    without: Annotated[list[str] | None, typer.Option(
        help="A clinical rule to switch off (repeatable): long_tail, combinations, "
             "contraindications, continuation, combination_therapy, profile.")] = None,
    rule_weight: Annotated[list[str] | None, typer.Option(
        help="RULE=WEIGHT: multiply a clinical rule's effects (repeatable; 0 = off).")] = None,
) -> None:
    """Synthetic MIMIC-III / MIMIC-IV / OMOP raw tables, with ground-truth drug probabilities."""
    if generator != "clinical" and (without or rule_weight):
        raise LeaderError("--without / --rule-weight: only for --generator clinical")
    config = ClinicalConfig.parse(without, rule_weight)

    console = Console(stderr=True)
    with Progress(
        TextColumn("synth {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"{fmt} patients", total=patients)
        summary = synthesize(
            out, fmt, patients, seed, force=force,
            progress=lambda done, total: bar.update(task, completed=done),
            generator=generator, config=config,
        )
    table = Table(title=f"leader synth → {summary['out']}", show_header=False)
    for key in ("format", "generator", "seed", "patients", "admissions", "single_visit_patients",
                "drug_classes", "mean_classes_per_prescribing_visit", "ddi_pairs", "seconds"):
        table.add_row(key, str(summary[key]))
    for name, rows in summary["rows"].items():
        table.add_row(name, f"{rows:,} rows")
    Console().print(table)
