"""`leader prompt`, `leader train-teacher`, `leader export-features`: the LEADER teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from leader.cli import app

console = Console()


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
) -> None:
    """Print the teacher's prompt for one visit."""
    from leader.prompts import render_prompt

    sample, prompt = render_prompt(
        data_dir, patient, visit, history=history, profile=profile, max_length=max_length,
        llm=llm,
    )
    typer.echo(prompt.text)
    note = f"sample {sample.sample_id}, {prompt.history_kept} earlier visit(s) shown"
    if prompt.n_tokens is not None:
        note += f", {prompt.n_tokens} tokens" + (" (shortened)" if prompt.shortened else "")
    console.print(f"[dim]{note}[/dim]", highlight=False)


@app.command("train-teacher")
def train_teacher_cmd(
    data: Annotated[Path, typer.Option(help="Prepared DATA_DIR.")],
    out: Annotated[Path, typer.Option(help="TEACHER_DIR to write (a model bundle).")],
    llm: Annotated[str, typer.Option(
        help="Backbone: smollm2, tiny, or a local Hugging Face causal-LM directory.")] = "smollm2",
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 3,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop after this many optimiser steps.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per step and process.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Batches per optimiser step.")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 2e-4,
    max_length: Annotated[int, typer.Option(help="Token budget of a prompt.")] = 512,
    history: Annotated[int, typer.Option(help="Earlier visits in the prompt (last K).")] = 3,
    profile: Annotated[bool, typer.Option(help="Add the profile sentence to prompts.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0: train the drug layer only).")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.1,
    margin_weight: Annotated[float, typer.Option(
        help="Weight of a multi-label margin loss added to BCE.")] = 0.0,
    dtype: Annotated[str, typer.Option(help="Backbone precision: fp32 or bf16.")] = "fp32",
    eval_every: Annotated[int | None, typer.Option(
        help="Validate every N steps (default: every epoch).", show_default=False)] = None,
    patience: Annotated[int, typer.Option(help="Validations without improvement.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of data order and initialisation.")] = 42,
    threshold: Annotated[float | None, typer.Option(
        help="Fixed decision threshold (default: tuned on validation, best mean F1).",
        show_default=False)] = None,
    max_drugs: Annotated[int | None, typer.Option(
        help="Recommend at most this many drugs per visit.", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        help="Replace an existing TEACHER_DIR / discard a checkpoint of other options.")] = False,
) -> None:
    """Fine-tune the LEADER teacher (LoRA + drug layer); rerun the same command to resume."""
    from leader.models.teacher import train_teacher

    config = {
        "llm": llm, "dtype": dtype, "lora_r": lora_r, "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout, "max_length": max_length, "history": history,
        "profile": profile, "margin_weight": margin_weight,
        "train": {
            "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
            "grad_accum": grad_accum, "lr": lr, "eval_every": eval_every, "patience": patience,
            "seed": seed,
        },
    }
    summary = train_teacher(data, out, config, force=force, threshold=threshold,
                            max_drugs=max_drugs)
    table = Table(title=f"teacher {out}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in summary["train"].items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("threshold", f"{summary['rule']['threshold']:g} "
                  f"({summary['rule']['threshold_rule']})")
    for split in ("val", "test"):
        for key, value in summary.get(split, {}).items():
            if key in ("jaccard", "f1", "prauc", "ddi_rate", "avg_meds"):
                table.add_row(f"{split} {key}", f"{value:.4f}")
    console.print(table)


@app.command("export-features")
def export_features_cmd(
    teacher: Annotated[Path, typer.Option(help="TEACHER_DIR from train-teacher.")],
    data: Annotated[Path, typer.Option(help="The DATA_DIR the teacher was trained on.")],
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
) -> None:
    """Write pooled hidden states and drug logits of every sample to TEACHER_DIR/features/."""
    from leader.features import export_features

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
