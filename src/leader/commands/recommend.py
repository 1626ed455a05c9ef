"""`leader recommend` (one patient or a JSONL batch) and `leader serve` (REST + web page)."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from leader.cli import app
from leader.errors import LeaderError
from leader.fhir_out import recommendation_bundle
from leader.recommend import Recommender

console = Console()
MAX_DDI_SHOWN = 10
err_console = Console(stderr=True)


@app.command("recommend")
def recommend_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="MODEL_DIR bundle to use")],
    patient: Annotated[
        Path | None,
        typer.Option(
            "--patient", "-p", help="One patient: JSON patient or FHIR R4 Bundle (detected)"
        ),
    ] = None,
    patients: Annotated[
        Path | None,
        typer.Option("--patients", help="Batch: one JSON patient or FHIR Bundle per line (JSONL)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Batch output file (JSONL)")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Recommend the k most probable classes")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Probability cut (default: the bundle's threshold)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="table, json, or fhir (a FHIR R4 Bundle of draft orders)",
        ),
    ] = "table",
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the inputs behind each recommended class")
    ] = False,
    show: Annotated[int, typer.Option("--show", help="Rows of the ranking to print")] = 15,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
) -> None:
    """Recommend drug classes for one patient (--patient) or a batch (--patients/--out).

    In batch mode a line that is not a valid patient gets an error record
    {"line": n, "error": "..."} in OUT and the other lines are still scored.
    """

    if fmt not in ("table", "json", "fhir"):
        raise LeaderError(f"--format {fmt}: expected table, json or fhir")
    if (patient is None) == (patients is None):
        raise LeaderError("give exactly one of --patient FILE or --patients FILE.jsonl")
    if patients is not None and out is None:
        raise LeaderError("--patients needs --out OUT.jsonl")
    if patients is not None and fmt == "fhir":
        raise LeaderError("--format fhir: one patient at a time (--patient FILE)")
    rec = Recommender.load(model)
    if patient is not None:
        result = rec.recommend_file(patient, top_k=top_k, threshold=threshold, explain=explain)
        if fmt == "fhir":
            sys.stdout.write(json.dumps(recommendation_bundle(result), indent=2) + "\n")
        elif as_json or fmt == "json":
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
        else:
            print_recommendation(result, show)
        return
    assert patients is not None and out is not None
    size = patients.stat().st_size if patients.is_file() else 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("recommending", total=size)
        n_ok, errors = rec.recommend_jsonl(
            patients,
            out,
            top_k=top_k,
            threshold=threshold,
            force=force,
            progress=lambda n: bar.advance(task, n),
            explain=explain,
        )
    console.print(f"[green]{n_ok}[/] patients scored → {out}")
    if errors:
        err_console.print(
            f"[yellow]{len(errors)} line(s) failed and have error records in {out}[/]; first:"
        )
        for e in errors[:3]:
            err_console.print(f"  {e['error']}", markup=False, highlight=False)


def print_recommendation(result: dict, show: int = 15) -> None:
    """A readable table: rank, class, name, probability bar, recommended mark."""
    chosen = set(result["recommended"])
    rule = f"top {result['top_k']}" if result["top_k"] else f"threshold {result['threshold']}"
    table = Table(
        title=f"{result['patient_id']}: {len(chosen)} drug classes recommended ({rule})",
        caption=f"model {result['model']['id']} (leader {result['model']['version']}); "
        "✓ = recommended",
    )
    table.add_column("#", justify="right")
    table.add_column("ATC3")
    table.add_column("class")
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    rows = result["ranked"][: max(show, len(chosen))]
    for i, d in enumerate(rows, start=1):
        filled = round(10 * d["probability"])
        bar = "█" * filled + "·" * (10 - filled)
        mark = "[green]✓[/]" if d["code"] in chosen else ""
        table.add_row(str(i), d["code"], d["name"], f"{d['probability']:.3f} {bar}", mark)
    console.print(table)
    pairs = result["ddi_warnings"]
    for w in pairs[:MAX_DDI_SHOWN]:
        console.print(
            f"[red]interaction:[/] {w['names'][0]} ({w['drugs'][0]}) with "
            f"{w['names'][1]} ({w['drugs'][1]})",
            highlight=False,
        )
    if len(pairs) > MAX_DDI_SHOWN:
        console.print(
            f"[red]... and {len(pairs) - MAX_DDI_SHOWN} more interacting pairs[/] (--json)"
        )
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    explanation = result.get("explanation")
    if explanation:
        console.print(f"why ({explanation['method']}, contribution in {explanation['unit']}):")
        titles = {d["code"]: d["name"] for d in result["ranked"]}
        for code, reasons in explanation["drugs"].items():
            shown = ", ".join(f"{r['title']} {r['contribution']:+.3f}" for r in reasons)
            console.print(f"  {titles[code]} ({code}): {shown or '-'}", highlight=False)


@app.command("serve")
def serve_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="MODEL_DIR bundle to serve")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the bearer token clients must send"),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1024, help="Largest request body accepted")
    ] = 1 << 20,
    threads: Annotated[
        int,
        typer.Option(
            min=1, help="Torch threads per request; 1 suits concurrent small requests best"
        ),
    ] = 1,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Without a token, a Host header name to accept besides the loopback names "
            "(repeatable)",
        ),
    ] = None,
) -> None:
    """Serve the REST API and the web page for one model bundle."""
    import torch

    from leader.serve.app import run  # deferred on purpose: FastAPI is slow to import
    from leader.serve.schemas import ServeSettings  # deferred with the app

    torch.set_num_threads(threads)

    token = read_token(token_file) if token_file is not None else None
    if token is None and not is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] binding {host} without --token-file: anyone who can reach "
            "this port can query the model"
        )
    rec = Recommender.load(model)
    settings = ServeSettings(
        host=host,
        port=port,
        token=token,
        max_body_bytes=max_body_bytes,
        allowed_hosts=tuple(allowed_host or ()),
    )
    run(
        rec,
        settings,
        announce=lambda: console.print(
            f"serving {rec.name} on http://{host}:{port}/ (API docs at /docs)"
        ),
    )


def read_token(path: Path) -> str:
    if not path.is_file():
        raise LeaderError(f"{path}: token file not found")
    token = path.read_text().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise LeaderError(f"{path}: expected one token of at least 16 characters, no spaces")
    if path.stat().st_mode & 0o077:
        err_console.print(f"[yellow]warning:[/] {path} is readable by other users (chmod 600)")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
