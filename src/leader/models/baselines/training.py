"""`leader train-baseline NAME`: fit a baseline, score it on val/test, write its bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leader.artifacts import check_can_write
from leader.bundle import save_bundle
from leader.data.dataset import Dataset
from leader.errors import LeaderError
from leader.models.base import model_class

BASELINES = ("popular", "repeat-last", "logreg", "retain", "gamenet", "safedrug", "oracle")


def train_baseline(
    name: str,
    data_dir: str | Path,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
    threshold: float | None = None,
    force: bool = False,
    run_dir: Path | None = None,
    max_drugs: int | None = None,
) -> tuple[Path, dict]:
    """Train baseline ``name`` on DATA_DIR and save it to MODEL_DIR ``out``; return (out, metrics)
    where metrics holds ``val``, ``test`` and ``rule`` (the stored decision rule).

    ``overrides`` (epochs, lr, seed, ...) apply to the neural baselines; the others take none.
    ``threshold`` None: tuned on validation (:func:`leader.evaluation.decide_threshold`).
    """
    from leader.evaluation import check_threshold, decide_threshold, split_metrics
    from leader.models.baselines.neural import NeuralBaseline

    if name not in BASELINES:
        raise LeaderError(f"baseline {name!r}: expected one of {', '.join(BASELINES)}")
    check_can_write(out, force)  # fail before the long work
    check_threshold(threshold, max_drugs)
    data = Dataset.load(data_dir)
    cls = model_class(name)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given and not issubclass(cls, NeuralBaseline):
        raise LeaderError(f"{name}: takes no training options (got {', '.join(sorted(given))})")
    model = cls(data.schema, given).fit(data, run_dir)
    rule = decide_threshold(model, data, threshold, max_drugs)
    metrics = split_metrics(model, data, rule["threshold"], max_drugs)
    extra = {}
    result = getattr(model, "train_result", None)
    if result is not None:
        extra["training"] = {"best_val_prauc": result.best_score, "best_step": result.best_step,
                             "steps": result.steps, "stopped_early": result.stopped_early}
    save_bundle(model, out, metrics=metrics, force=force, extra=extra, rule=rule)
    return Path(out), {**metrics, "rule": rule}
