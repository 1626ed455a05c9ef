"""`leader tune MODEL`: hyper-parameter search on the validation split, written as a config file.

Optuna's TPE sampler proposes a configuration, the model trains with the shared loop, and each
validation PRAUC is reported to a median pruner that stops trials which trail the others. Only
the train and val splits are read: the test split stays untouched, so a tuned model's test
figures are still honest. The best trial's values go to a JSON file that `leader distill
--config` (student) or `leader train-baseline --config` (neural baselines) read back.

Config file layout::

    {"model": "student", "config": {model keys}, "options": {training options},
     "best_val_prauc": 0.61, "trials": 12, "pruned": 5, "budget_minutes": 5.0, "seed": 0}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leader.artifacts import read_json, write_json
from leader.data.dataset import Dataset
from leader.errors import LeaderError

TUNABLE = ("student", "retain", "gamenet", "safedrug")


def student_space(trial: Any, distilling: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model keys, training options) of one student trial."""
    config = {
        "dim": trial.suggest_categorical("dim", [64, 128]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "wide": trial.suggest_categorical("wide", [True, False]),
        "set_encoder": trial.suggest_categorical("set_encoder", ["transformer", "mean"]),
        "wide_l2": trial.suggest_float("wide_l2", 1e-4, 1e-2, log=True),
    }
    options: dict[str, Any] = {"lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True)}
    if distilling:  # α and β chosen on validation, like every other setting
        options["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
        options["beta"] = trial.suggest_float("beta", 0.0, 0.05)
        options["distill_loss"] = trial.suggest_categorical("distill_loss", ["mse", "cosine"])
    return config, options


def baseline_space(trial: Any) -> dict[str, Any]:
    """Model keys of one neural-baseline trial (their training options are model keys too)."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 5e-3, log=True),
        "dim": trial.suggest_categorical("dim", [64, 128]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
    }


def _objective(
    name: str, data: Dataset, epochs: int, teacher: Path | None
) -> Callable[[Any], float]:
    import optuna

    features = None
    if name == "student" and teacher is not None:
        from leader.distill import DistillOptions, load_teacher

        features = load_teacher(teacher, data, DistillOptions(alpha=1.0))

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
        if name == "student":
            from leader.distill import DistillOptions, fit
            from leader.models.student import Student

            config, options = student_space(trial, features is not None)
            trial.set_user_attr("config", config)
            trial.set_user_attr("options", options)
            model = Student(data.schema, config)
            # without a teacher α is 0 and β the data source's default, as `distill` uses them
            opts = DistillOptions(**{"alpha": 0.0, **options}, epochs=epochs, progress=False)
            result = fit(model, data, opts, features=features, on_eval=report(trial))
        else:
            from leader.models.base import model_class

            config = {**baseline_space(trial), "epochs": epochs}
            trial.set_user_attr("config", config)
            trial.set_user_attr("options", {})
            model = model_class(name)(data.schema, {**config, "progress": False})
            model.on_eval = report(trial)
            result = model.fit(data).train_result
        return float(result.best_score)

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
    import optuna

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
        _objective(name, data, epochs, teacher), n_trials=trials, timeout=budget_minutes * 60
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
        "options": best.user_attrs["options"],
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


def read_config(path: str | Path, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model keys, training options) of a tune config file written for ``model``."""
    path = Path(path)
    if not path.is_file():
        raise LeaderError(f"--config {path}: file not found")
    found = read_json(path)
    if not isinstance(found, dict) or not isinstance(found.get("config"), dict):
        raise LeaderError(f"{path}: expected a `leader tune` config with a 'config' object")
    if found.get("model") != model:
        raise LeaderError(f"{path}: a config for {found.get('model')!r}, not {model!r}")
    return dict(found["config"]), dict(found.get("options") or {})
