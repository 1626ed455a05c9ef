"""`leader tune MODEL`: hyper-parameter search on the validation split, written as a config file.

Optuna's TPE sampler proposes a configuration, the model trains with the shared loop, and each
validation PRAUC is reported to a median pruner that stops trials which trail the others. Only
the train and val splits are read: the test split stays untouched, so a tuned model's test
figures are still honest. The best trial's values go to a JSON file that `leader distill
--config` (student) or `leader train-baseline --config` (neural baselines) read back.

Config file layout::

    {"model": "student", "config": {settings, "train": {...}}, "best_val_prauc": 0.61,
     "trials": 12, "pruned": 5, "budget_minutes": 5.0, "seed": 0}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leader.artifacts import write_json
from leader.data.dataset import Dataset
from leader.errors import LeaderError
from leader.models.base import model_class
from leader.pipelines import teacher_features
from leader.train import FitContext

TUNABLE = ("student", "retain", "gamenet", "safedrug")


def student_space(trial: Any, distilling: bool) -> dict[str, Any]:
    """The StudentConfig settings of one trial."""
    config: dict[str, Any] = {
        "dim": trial.suggest_categorical("dim", [64, 128]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "wide": trial.suggest_categorical("wide", [True, False]),
        "set_encoder": trial.suggest_categorical("set_encoder", ["transformer", "mean"]),
        "wide_l1": trial.suggest_float("wide_l1", 1e-4, 1e-2, log=True),
        "wide_l2": trial.suggest_categorical("wide_l2", [0.0, 1e-4, 1e-3]),
        "train": {"lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True)},
    }
    if distilling:  # α and β chosen on validation, like every other setting
        config["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
        config["beta"] = trial.suggest_float("beta", 0.0, 0.05)
        config["distill_loss"] = trial.suggest_categorical("distill_loss", ["mse", "cosine"])
    else:  # without a teacher α is 0 and β the data source's default, as `distill` uses them
        config["alpha"] = 0.0
    return config


def baseline_space(trial: Any) -> dict[str, Any]:
    """The settings of one neural-baseline trial."""
    return {
        "dim": trial.suggest_categorical("dim", [64, 128]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "train": {"lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True)},
    }


def _objective(
    name: str, data: Dataset, epochs: int, teacher: Path | None
) -> Callable[[Any], float]:
    import optuna  # deferred on purpose: optuna is slow to import and only needed here

    features = None
    if name == "student" and teacher is not None:
        features = teacher_features(teacher, data, online=False, standardize=True)

    def report(trial: Any) -> Callable[[int, float], None]:
        count = [0]

        def on_eval(step: int, score: float) -> None:
            count[0] += 1
            if not math.isnan(score):
                trial.report(score, count[0])
                if trial.should_prune():
                    raise optuna.TrialPruned()

        return on_eval

    def objective(trial: Any) -> float:
        config = student_space(trial, features is not None) if name == "student" else (
            baseline_space(trial))
        config["train"]["epochs"] = epochs
        trial.set_user_attr("config", config)
        model = model_class(name)(data.schema, config)
        model.fit(data, FitContext(progress=False, on_eval=report(trial), teacher=features))
        return float(model.fit_summary["best_val_prauc"])

    return objective


def tune(
    name: str,
    data_dir: str | Path,
    out: str | Path,
    budget_minutes: float,
    epochs: int = 10,
    trials: int | None = None,
    teacher: Path | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Search ``name``'s settings on DATA_DIR's validation split within the budget; write and
    return the config file's dict. ``teacher`` (student only) adds α, β and the loss."""
    import optuna  # deferred on purpose: optuna is slow to import and only needed here

    if name not in TUNABLE:
        raise LeaderError(f"tune {name!r}: expected one of {', '.join(TUNABLE)}")
    if teacher is not None and name != "student":
        raise LeaderError(f"tune {name}: a teacher is only used by the student")
    if budget_minutes <= 0:
        raise LeaderError(f"budget {budget_minutes}: expected minutes > 0")
    out = Path(out)
    if out.exists() and not force:
        raise LeaderError(f"{out}: exists; add --force to replace it")
    data = Dataset.load(data_dir)
    if not data.samples("val"):
        raise LeaderError(f"{data.root}: the val split is empty; tuning needs validation visits")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    started = time.perf_counter()
    study.optimize(
        _objective(name, data, epochs, teacher), n_trials=trials, timeout=budget_minutes * 60,
        gc_after_trial=True,  # a pruned trial's model (on a GPU: its memory) goes at once
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise LeaderError(
            f"tune {name}: no trial finished within {budget_minutes} minutes; give more budget"
        )
    best = study.best_trial
    result = {
        "model": name,
        "config": best.user_attrs["config"],
        "best_val_prauc": float(best.value),
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "budget_minutes": budget_minutes,
        "seconds": round(time.perf_counter() - started, 1),
        "epochs_per_trial": epochs,
        "teacher": str(teacher) if teacher is not None else None,
        "seed": seed,
        "data": {"dir": str(data.root), "hash": data.data_hash},
        "searched_on": "train (fit) and val (PRAUC); the test split is never read",
    }
    write_json(out, result)
    return result
