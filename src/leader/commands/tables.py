"""Tables the fit commands print: one layout for every model."""

from __future__ import annotations

from rich.table import Table

from leader.metrics import METRIC_LABELS, METRICS
from leader.pipelines import FitResult


def fit_table(result: FitResult) -> Table:
    """Validation and test point metrics of a fitted model, a teacher's beside a student's."""
    name = result.model.name
    rule = result.rule
    table = Table(title=f"{name} → {result.out}", title_justify="left",
                  caption=f"point estimates on the whole split, threshold "
                  f"{rule['threshold']:.2f} ({rule['threshold_rule']})")
    table.add_column("metric", style="bold")
    columns = [(f"{name} {split}", result.metrics[split]) for split in ("val", "test")
               if split in result.metrics]
    teacher = result.notes.get("teacher_metrics") or {}
    columns += [(f"teacher {split}", teacher[split]) for split in ("val", "test")
                if split in teacher]
    for label, _ in columns:
        table.add_column(label, justify="right")
    table.add_row("visits", *(str(values.get("n_visits", "-")) for _, values in columns))
    for metric in METRICS:
        cells = [f"{v[metric]:.4f}" if isinstance(v.get(metric), float) else "-"
                 for _, v in columns]
        table.add_row(METRIC_LABELS[metric], *cells)
    return table


def training_line(result: FitResult) -> str:
    """One line on how training went (models that train with the shared loop)."""
    t = result.training
    parameters = f"{result.model.num_parameters():,} parameters"
    if "best_val_prauc" not in t:
        return f"{result.model.name}: {parameters}, fitted in {result.timings['fit']:.1f} s"
    return (
        f"{result.model.name}: {parameters}, best validation PRAUC {t['best_val_prauc']:.4f} at "
        f"step {t['best_step']} of {t['steps']} ({result.timings['fit']:.1f} s)"
    )
