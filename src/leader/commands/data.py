"""`leader prepare` (raw EHR tables → DATA_DIR) and `leader info` (print a DATA_DIR's stats)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from leader.artifacts import read_manifest
from leader.cli import app
from leader.commands import console
from leader.data import sources
from leader.data.cohort import PrepareConfig, prepare
from leader.data.dataset import DATA_FORMAT_VERSION, DATA_KIND
from leader.errors import LeaderError

FROM_DATA = "from-data"



def parse_split(text: str) -> tuple[float, float, float]:
    """``0.8,0.1,0.1`` → (0.8, 0.1, 0.1); the config checks the shares themselves."""
    if text == FROM_DATA:
        return (0.8, 0.1, 0.1)  # unused: the dataset's own split
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise LeaderError(
            f"--split {text!r}: expected three numbers train,val,test like 0.8,0.1,0.1, "
            f"or {FROM_DATA}"
        )
    return parts  # type: ignore[return-value]


def parse_options(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings → a dict (the source checks the keys)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LeaderError(f"--source-option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def _source_help() -> str:
    """The registered names (without importing the source modules: CLI start-up stays quick)."""
    names = sources.names()
    return f"Raw data format: {', '.join(names[:-1])} or {names[-1]} (docs/data.md)."


def _table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    return table


def print_summary(manifest: dict, where: Path) -> None:
    console.print(_table(f"{where}  ({manifest.get('source', '?')})", manifest.get("stats", {})))
    mapping = manifest.get("mapping")
    if mapping:
        console.print(_table("prescription rows by mapping route", mapping))
    drops = {k: v for k, v in manifest.get("drops", {}).items() if v}
    if drops:
        console.print(_table("dropped (non-zero counts)", drops))


@app.command("prepare")
def prepare_cmd(
    source: Annotated[str, typer.Option(help=_source_help())],
    root: Annotated[str, typer.Option(
        help="Folder with the raw tables (MIMIC-IV: the one holding hosp/, or hosp/ itself; "
        "MEDS: the dataset root with data/); the word 'demo' means the bundled MIMIC-III demo.")],
    out: Annotated[Path, typer.Option(help="DATA_DIR to write.")],
    top_drugs: Annotated[int, typer.Option(
        help="Keep the N most frequent ATC3 classes (0: all).")] = 300,
    top_diagnoses: Annotated[int, typer.Option(
        help="Keep the N most frequent diagnoses (0: all).")] = 2000,
    top_procedures: Annotated[int | None, typer.Option(
        help="Keep the N most frequent procedures (0: all). Default: all for mimic3, "
        "1000 for mimic4.", show_default=False)] = None,
    min_visits: Annotated[int, typer.Option(
        help="Drop patients with fewer visits (1 keeps single-visit patients).")] = 1,
    patient_fraction: Annotated[float, typer.Option(
        help="Use a seeded share of the patients (LEADER's MIMIC-IV cohort: 0.15).")] = 1.0,
    split: Annotated[str, typer.Option(
        help=f"Train,val,test shares of patients, or '{FROM_DATA}': the dataset's own split "
        "(MEDS subject_splits).")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the patient shuffle.")] = 42,
    ddi: Annotated[Path | None, typer.Option(
        help="CSV of interacting ATC3 pairs (default: the bundled TWOSIDES-derived pairs).",
        show_default=False)] = None,
    keep_ndc_zero: Annotated[bool, typer.Option(
        help="Map rows with NDC 0/empty by GSN and drug name instead of dropping them.")] = False,
    source_option: Annotated[list[str] | None, typer.Option(
        help="A setting of the source, KEY=VALUE, repeatable (docs/data.md lists them).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing DATA_DIR.")] = False,
) -> None:
    """Turn raw EHR tables (MIMIC-III/IV, OMOP CDM, MEDS) into a prepared cohort (DATA_DIR)."""

    overrides = {
        "top_drugs": top_drugs or None,
        "top_diagnoses": top_diagnoses or None,
        "min_visits": min_visits,
        "patient_fraction": patient_fraction,
        "split": parse_split(split),
        "split_from_data": split == FROM_DATA,
        "seed": seed,
        "ddi": str(ddi) if ddi else None,
        "drop_ndc_zero": not keep_ndc_zero,
    }
    if top_procedures is not None:
        overrides["top_procedures"] = top_procedures or None
    config = PrepareConfig.for_source(source, **overrides)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)
        manifest = prepare(
            source, root, out, config, force=force,
            progress=lambda msg: bar.update(task, description=msg),
            options=parse_options(source_option or []),
        )
    print_summary(manifest, out)
    console.print(f"wrote {out}")


@app.command("info")
def info_cmd(data_dir: Annotated[Path, typer.Argument(help="A prepared DATA_DIR.")]) -> None:
    """Print the cohort statistics of a DATA_DIR."""

    manifest = read_manifest(data_dir, DATA_KIND, DATA_FORMAT_VERSION)
    print_summary(manifest, data_dir)
