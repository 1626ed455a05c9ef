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
CHECKPOINTING = {"on": True, "off": False, "auto": "auto"}


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
    from leader.prompts import render_prompt

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
    from leader.prompts import prompt_stats

    stats = prompt_stats(data_dir, split=split, history=history, profile=profile,
                         max_length=max_length, titles=titles, llm=llm)
    table = Table(title=f"prompts of {data_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in stats.to_dict().items():
        table.add_row(key, "-" if value is None else f"{value:,.0f}")
    console.print(table)


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
    max_length: Annotated[int | None, typer.Option(
        help="Token budget of a prompt (default: 2048, capped at the backbone's positions).",
        show_default=False)] = None,
    history: Annotated[int, typer.Option(help="Earlier visits in the prompt (last K).")] = 3,
    profile: Annotated[bool, typer.Option(help="Add the profile sentence to prompts.")] = False,
    titles: Annotated[str, typer.Option(
        help="Code titles in prompts: long, or short (MIMIC-III SHORT_TITLE).")] = "long",
    max_batch_tokens: Annotated[int | None, typer.Option(
        help="Cap on padded tokens per batch (rows x longest); 0: no cap.")] = 2048,
    gradient_checkpointing: Annotated[str, typer.Option(
        help="Recompute activations in the backward pass (less memory, ~30% more compute): "
        "on, off, or auto (on when the estimated peak exceeds half the RAM / 90% of the GPU)."
    )] = "auto",
    train_layers: Annotated[int | None, typer.Option(
        help="LoRA on the top K blocks only; the frozen lower blocks' output is cached "
        "(a departure from the paper, for small machines). Default: all blocks.",
        show_default=False)] = None,
    quantize: Annotated[str | None, typer.Option(
        help="Load the backbone in 4bit or 8bit (QLoRA; CUDA + bitsandbytes).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        help="Torch threads per process on CPU (default 1: processes share small CPUs).")] = 1,
    export: Annotated[bool, typer.Option(
        "--export-features/--no-export-features",
        help="Export the features in the same pass that scores val/test.")] = True,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0: train the drug layer only).")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.1,
    margin_weight: Annotated[float, typer.Option(
        help="Weight of a multi-label margin loss added to BCE.")] = 0.0,
    dtype: Annotated[str, typer.Option(
        help="Backbone precision: auto (bf16 where the hardware has bf16 matrix units, else "
        "fp32), fp32 or bf16.")] = "auto",
    eval_every: Annotated[int | None, typer.Option(
        help="Validate every N steps (default: every epoch).", show_default=False)] = None,
    patience: Annotated[int, typer.Option(help="Validations without improvement.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of data order and initialisation.")] = 42,
    force: Annotated[bool, typer.Option(
        help="Replace an existing TEACHER_DIR / discard a checkpoint of other options.")] = False,
) -> None:
    """Fine-tune the LEADER teacher (LoRA + drug layer); rerun the same command to resume."""
    from leader.models.teacher import train_teacher

    config = {
        "llm": llm, "dtype": dtype, "lora_r": lora_r, "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout, "max_length": max_length, "history": history,
        "profile": profile, "margin_weight": margin_weight, "titles": titles,
        "max_batch_tokens": max_batch_tokens or None,
        "gradient_checkpointing": CHECKPOINTING.get(gradient_checkpointing, gradient_checkpointing),
        "train_layers": train_layers,
        "quantize": quantize, "threads": threads,
        "train": {
            "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
            "grad_accum": grad_accum, "lr": lr, "eval_every": eval_every, "patience": patience,
            "seed": seed,
        },
    }
    summary = train_teacher(
        data, out, config, force=force, export=export,
        on_info=lambda line: console.print(f"[dim]{line}[/dim]", highlight=False),
    )
    table = Table(title=f"teacher {out}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in summary["train"].items():
        if isinstance(value, dict):  # prompt statistics: one row each
            for k, v in value.items():
                table.add_row(f"{key} {k}", str(v))
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for split in ("val", "test"):
        for key, value in summary.get(split, {}).items():
            if key in ("jaccard", "f1", "prauc", "ddi_rate", "avg_meds"):
                table.add_row(f"{split} {key}", f"{value:.4f}")
    console.print(table)
    if "features" in summary:
        console.print(f"features in {summary['features']['dir']}")


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
