"""`leader synth`: write synthetic raw MIMIC tables with planted drug structure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from leader.cli import app


@app.command("synth")
def synth(
    fmt: Annotated[str, typer.Option(
        "--format", help="Raw layout to write: mimic3, mimic4 or omop.")],
    patients: Annotated[int, typer.Option(help="Number of patients to generate.")],
    out: Annotated[Path, typer.Option(help="RAW_DIR to create.")],
    seed: Annotated[int, typer.Option(help="Seed of the generator and of the data.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RAW_DIR.")] = False,
) -> None:
    """Synthetic MIMIC-III / MIMIC-IV / OMOP raw tables, with ground-truth drug probabilities."""
    from leader.data.synth import synthesize

    console = Console(stderr=True)
    with Progress(
        TextColumn("synth {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"{fmt} patients", total=patients)
        summary = synthesize(
            out, fmt, patients, seed, force=force,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    table = Table(title=f"leader synth → {summary['out']}", show_header=False)
    for key in ("format", "seed", "patients", "admissions", "single_visit_patients",
                "drug_classes", "mean_classes_per_prescribing_visit", "ddi_pairs", "seconds"):
        table.add_row(key, str(summary[key]))
    for name, rows in summary["rows"].items():
        table.add_row(name, f"{rows:,} rows")
    Console().print(table)
