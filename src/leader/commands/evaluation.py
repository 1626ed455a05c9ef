"""`leader evaluate`, `leader train-baseline` and `leader compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from leader.artifacts import write_json_atomic
from leader.cli import app
from leader.commands import console
from leader.commands.options import Calibration, MaxDrugs, config_options, read_config_file
from leader.commands.options import Threshold as OptThreshold
from leader.commands.tables import fit_table, training_line
from leader.configs import ConfigError
from leader.evaluation import calibrate_bundle, evaluate, protocol_line
from leader.metrics import METRIC_LABELS, METRICS
from leader.models.base import BASELINES, model_class
from leader.pipelines import fit_model
from leader.train import TrainConfig

Rounds = Annotated[int, typer.Option(help="Resampling rounds.")]
Frac = Annotated[float, typer.Option(help="Share of the split drawn per round (with replacement).")]
Seed = Annotated[int, typer.Option(help="Seed of the resamples (same seed: same draws).")]
Threshold = Annotated[float | None, typer.Option(
    help="Fixed probability cut for every model (default: each bundle's own rule).",
    show_default=False)]
Tune = Annotated[bool, typer.Option(
    "--tune-threshold", help="Tune the threshold on the val split now (best mean F1).")]


def _metric_table(result: dict) -> Table:

    table = Table(title=f"{result['model']['name']}  ({result['model']['dir']})",
                  caption=protocol_line(result["protocol"]), title_justify="left")
    for col in ("group", "visits", *(METRIC_LABELS[m] for m in METRICS)):
        table.add_column(col, justify="left" if col == "group" else "right")
    blocks = [("all", result["data"]["n_visits"], result["metrics"])]
    for g in ("first_visit", "returning"):
        blocks.append((g, result["groups"][g]["n_visits"], result["groups"][g]["metrics"]))
    for k, block in result["groups"]["by_visits"].items():
        blocks.append((f"{k} visits", block["n_visits"], block["metrics"]))
    for name, n, m in blocks:
        cells = ["-"] * 5 if m is None else [
            f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
            for k in METRICS
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

    result = evaluate(model, data, split, rounds, frac, seed, threshold, tune_threshold)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    console.print(_metric_table(result))
    if out is not None:
        console.print(f"wrote {out}")


@app.command("calibrate")
def calibrate_cmd(
    model: Annotated[Path, typer.Option(help="MODEL_DIR bundle to calibrate.")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR (its val split is used).")],
    method: Calibration = "temperature",
    out: Annotated[Path | None, typer.Option(
        help="Write the calibrated bundle here (default: replace MODEL_DIR).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Fit a calibration on the val split and store it in the bundle (applied on load)."""

    written, cal, rule = calibrate_bundle(model, data, method, out, force)
    line = f"{written}: calibration {cal.describe()}"
    if rule is not None:
        line += f"; threshold {rule['threshold']:g} ({rule['threshold_rule']})"
    console.print(line, highlight=False)


@app.command("train-baseline")
@config_options(TrainConfig, build=False, config_file=False)
def train_baseline_cmd(
    name: Annotated[str, typer.Argument(help=", ".join(BASELINES) + ".")],
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    out: Annotated[Path, typer.Option(help="MODEL_DIR to write.")],
    config: dict,
    model_config: Annotated[Path | None, typer.Option(
        "--config", help="JSON settings of the model (its model.json `config`, or from "
        "`leader tune`).", show_default=False)] = None,
    threshold: OptThreshold = None,
    max_drugs: MaxDrugs = None,
    calibration: Calibration = "none",
    force: Annotated[bool, typer.Option(
        help="Replace an existing MODEL_DIR / discard a checkpoint of other options.")] = False,
) -> None:
    """Train a baseline and save it as a bundle (usable by evaluate, recommend and serve).

    Training options (--epochs, --lr, ...) apply to the neural baselines and default to each
    model's own values.
    """
    result = fit_model(name, data, out, baseline_config(name, config, model_config),
                       threshold=threshold, max_drugs=max_drugs, force=force,
                       calibration=calibration)
    console.print(training_line(result), highlight=False)
    console.print(fit_table(result))


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
    calibration: Annotated[str, typer.Option(
        help="For the calibration section: the method fitted on val for a model whose bundle "
        "has no calibration (none: show only the models' own probabilities).")] = "temperature",
) -> None:
    """Evaluate several models on the same resamples; write tables, figures and report.html.

    Without --threshold / --tune-threshold each model uses its bundle's rule (tuned on
    validation when it was trained)."""
    from rich.progress import Progress

    from leader.report import compare, paired_markdown  # deferred: matplotlib is slow to import
    from leader.report import markdown as md  # deferred with compare

    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=len(models))

        def step(label: str) -> None:
            progress.update(task, description=f"evaluating {label}", advance=0)

        table = compare(data, models, out, rounds, frac, seed, threshold, tune_threshold, split,
                        force, on_model=lambda label: (step(label), progress.advance(task)),
                        calibration=calibration, reference=reference)
    typer.echo(md(table["rows"], table["protocol_line"]))  # plain: Markdown must not wrap
    if table["paired"]:
        typer.echo(paired_markdown(table["paired"], reference))
    for warning in table["warnings"]:
        typer.echo(f"warning: {warning}")
    console.print(f"wrote {out}/report.html")


def baseline_config(name: str, options: dict, path: Path | None) -> dict:
    """The model's settings from ``--model-config``, with the training options given on the
    command line over them (only those given: the rest keep the model's own defaults)."""
    if name not in BASELINES:
        raise ConfigError("name", f"expected one of {', '.join(BASELINES)}, got {name!r}")
    raw = read_config_file(path)
    given = options  # flat: the TrainConfig fields given on the command line
    if given:
        if "train" not in model_class(name).config_class.__dataclass_fields__:
            raise ConfigError(sorted(given)[0], f"{name} takes no training options")
        raw["train"] = {**raw.get("train", {}), **given}
    return raw
