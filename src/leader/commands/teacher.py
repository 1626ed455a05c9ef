"""`leader prompt`, `train-teacher`, `export-features`, `teacher-memory`: the LEADER teacher."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from leader.cli import app
from leader.commands import console
from leader.commands.options import Calibration, MaxDrugs, Threshold, config_options
from leader.commands.tables import fit_table, training_line
from leader.data.dataset import Dataset
from leader.models.teacher import TeacherConfig, memory_plan
from leader.pipelines import export_features, fit_model
from leader.prompts import prompt_stats, render_prompt


@app.command("prompt")
def prompt_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared DATA_DIR.")],
    patient: Annotated[str, typer.Option(help="Patient id.")],
    visit: Annotated[int | None, typer.Option(
        help="Visit index (0 = first kept visit); default: the patient's last.",
        show_default=False)] = None,
    history: Annotated[int, typer.Option(help="Earlier visits to include (the last K).")] = 3,
    profile: Annotated[bool, typer.Option(help="Add the profile sentence.")] = False,
    max_length: Annotated[int | None, typer.Option(
        help="Token budget (shortens the prompt as training would).", show_default=False)] = None,
    llm: Annotated[str, typer.Option(
        help="Tokenizer for --max-length: smollm2, tiny or a model directory.")] = "smollm2",
    titles: Annotated[str, typer.Option(help="long or short code titles.")] = "long",
) -> None:
    """Print the teacher's prompt for one visit."""

    sample, prompt = render_prompt(
        data_dir, patient, visit, history=history, profile=profile, max_length=max_length,
        llm=llm, titles=titles,
    )
    typer.echo(prompt.text)
    note = f"sample {sample.sample_id}, {prompt.history_kept} earlier visit(s) shown"
    if prompt.n_tokens is not None:
        note += f", {prompt.n_tokens} tokens" + (" (shortened)" if prompt.shortened else "")
    console.print(f"[dim]{note}[/dim]", highlight=False)


@app.command("prompt-stats")
def prompt_stats_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared DATA_DIR.")],
    split: Annotated[str | None, typer.Option(
        help="train, val or test (default: all).", show_default=False)] = None,
    history: Annotated[int, typer.Option(help="Earlier visits to include (the last K).")] = 3,
    profile: Annotated[bool, typer.Option(help="Add the profile sentence.")] = False,
    max_length: Annotated[int | None, typer.Option(
        help="Token budget (default: none, full prompts).", show_default=False)] = None,
    titles: Annotated[str, typer.Option(help="long or short code titles.")] = "long",
    llm: Annotated[str, typer.Option(
        help="Tokenizer: smollm2, tiny or a model directory.")] = "smollm2",
) -> None:
    """Prompt lengths (p50/p90/max tokens) and what a budget would cut, for every visit."""


    stats = prompt_stats(data_dir, split=split, history=history, profile=profile,
                         max_length=max_length, titles=titles, llm=llm, progress=True)
    table = Table(title=f"prompts of {data_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in stats.to_dict().items():
        table.add_row(key, "-" if value is None else f"{value:,.0f}")
    console.print(table)


@app.command("train-teacher")
@config_options(TeacherConfig)
def train_teacher_cmd(
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    out: Annotated[Path, typer.Option(help="TEACHER_DIR to write (a model bundle).")],
    config: TeacherConfig,
    export: Annotated[bool, typer.Option(
        "--export-features/--no-export-features",
        help="Export the features in the same pass that scores val/test.")] = True,
    threshold: Threshold = None,
    max_drugs: MaxDrugs = None,
    calibration: Calibration = "none",
    force: Annotated[bool, typer.Option(
        help="Replace an existing TEACHER_DIR / discard a checkpoint of other options.")] = False,
) -> None:
    """Fine-tune the LEADER teacher (LoRA + drug layer); rerun the same command to resume."""
    result = fit_model(
        "teacher", data, out, config, threshold=threshold, max_drugs=max_drugs, force=force,
        export=export, calibration=calibration,
        on_info=lambda line: console.print(f"[dim]{line}[/dim]", highlight=False),
    )
    summary = result.training
    console.print(training_line(result), highlight=False)
    console.print(f"prompts built {summary['prompts_built']}, shortened to fit "
                  f"{summary['prompts_shortened']}; padding share {summary['padding_share']}",
                  highlight=False)
    console.print(fit_table(result))
    if "features" in result.notes:
        console.print(f"features in {result.notes['features']['dir']}")


@app.command("export-features")
def export_features_cmd(
    teacher: Annotated[Path, typer.Option(help="TEACHER_DIR from train-teacher.")],
    data: Annotated[Path, typer.Option(help="The DATA_DIR the teacher was trained on.")],
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
) -> None:
    """Write pooled hidden states and drug logits of every sample to TEACHER_DIR/features/."""
    with Progress(
        TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("export", total=None)
        index = export_features(
            teacher, data, batch_size=batch_size,
            on_total=lambda n: bar.update(task, total=n),
            on_progress=lambda n: bar.advance(task, n),
        )
    counts = ", ".join(f"{s} {v['n']}" for s, v in index["splits"].items())
    console.print(
        f"features in {index['dir']}: {counts} (hidden size {index['hidden_size']}; "
        f"{index['computed']} computed, {index['reused']} reused)"
    )


@app.command("teacher-memory")
@config_options(TeacherConfig)
def teacher_memory_cmd(
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    config: TeacherConfig,
    device: Annotated[str | None, typer.Option(
        help="cpu or cuda: plan for this kind of device (default: this machine's).",
        show_default=False)] = None,
    length: Annotated[int | None, typer.Option(
        help="Plan for rows of this many tokens instead of the cohort's longest prompt.",
        show_default=False)] = None,
) -> None:
    """Estimated peak memory of train-teacher with these options, without loading the weights."""
    plan = memory_plan(Dataset.load(data), config, device, length, progress=True)
    say = partial(console.print, highlight=False, soft_wrap=True)
    say(f"{plan['llm']} in {plan['dtype']} on {plan['device']}: largest batch "
        f"{plan['batch_tokens']:,} padded tokens (rows of {plan['longest']:,})")
    for key in ("without_checkpointing", "with_checkpointing"):
        say(f"{key.replace('_', ' ')}: {plan[key].line()}")
    if plan["budget_gib"] is not None:
        over = plan["without_checkpointing"].total_gib > plan["budget_gib"]
        say(f"budget {plan['budget_gib']} GiB: --gradient-checkpointing auto would turn it "
            f"{'on' if over else 'off'}")
