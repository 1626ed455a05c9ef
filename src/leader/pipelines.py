"""Fit → score → bundle: the one workflow behind `train-teacher`, `distill` and `train-baseline`.

Every model goes through :func:`fit_model`: the output is checked first (nothing long runs
before a refusal), checkpoints go to ``.<OUT>.run/`` beside the output, a rerun of the same
command resumes there (a leftover run of other options is refused unless ``force``), the model
is scored on the validation and test splits, and rank 0 alone writes the bundle. Models only
fit and predict (:mod:`leader.models`); scoring is :mod:`leader.evaluation`, bundles are
:mod:`leader.bundle`.

:func:`export_features` runs a saved teacher over every sample for distillation, and
:func:`teacher_features` gives a student's fit those features (exported, or the teacher run
online).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from leader import calibration as calib
from leader.artifacts import (
    check_can_write,
    read_json,
    remove_dead_temps,
    write_json_atomic,
)
from leader.bundle import load, save_bundle
from leader.configs import Config, ConfigError
from leader.data.dataset import SPLITS, Dataset
from leader.data.samples import Sample
from leader.distributed import barrier, encode_shared, ensure_process_group, is_main
from leader.errors import LeaderError
from leader.evaluation import calibrate_on, check_threshold, decide_threshold, split_metrics
from leader.features import DEFAULT_SHARD_SIZE, FeatureTable, TeacherFeatures, teacher_hash
from leader.features import export_features as write_features
from leader.models.base import MedModel, model_class
from leader.train import FitContext

RUN_IDENTITY = "run.json"


@dataclass
class FitResult:
    """What a fit produced: the model, where it was saved, its metrics and how long it took."""

    model: MedModel
    out: Path
    run_dir: Path
    metrics: dict[str, dict[str, Any]]  # val / test point metrics at the bundle's decision rule
    rule: dict[str, Any]  # the decision rule: threshold (tuned on val or fixed), cap, in words
    training: dict[str, Any]  # the model's fit summary (best validation PRAUC, steps, ...)
    timings: dict[str, float]  # seconds: fit, score, save
    notes: dict[str, Any] = field(default_factory=dict)  # model-specific (teacher metrics ...)


# --- run directories ----------------------------------------------------------------------------


def run_dir_for(out: Path) -> Path:
    """Checkpoints live beside an artifact (``.<name>.run/``), which only appears when done."""
    out = Path(out)
    return out.parent / f".{out.name}.run"


def prepare_run_dir(run_dir: Path, identity: dict, force: bool) -> None:
    """Resume only a run started with the same options and data; ``force`` starts again.

    ``identity`` is everything that changes the result (model config, input hashes).
    """
    wanted = json.loads(json.dumps(identity, default=str))
    path = run_dir / RUN_IDENTITY
    if run_dir.exists():
        found = _read_identity(path)
        # no readable identity: the run was killed before it wrote one, so before any checkpoint
        if found is not None and found != wanted and not force:
            raise LeaderError(
                f"{run_dir}: holds an unfinished run with other options or data; rerun the "
                "same command to resume it, or add --force to start again"
            )
        if found != wanted:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(run_dir)  # a killed run's half-written identity or best weights
    write_json_atomic(path, wanted)  # a kill leaves the old file or the new one, never half


def _read_identity(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- teacher features for distillation ----------------------------------------------------------


class OnlineTeacher:
    """The teacher run on each training batch (no_grad), instead of exported features.

    Slower by the teacher's forward per step, but needs no export and always matches the
    teacher's current weights.
    """

    def __init__(self, teacher_dir: Path, data: Dataset):
        self.model = load(teacher_dir).model
        if not hasattr(self.model, "encode"):
            raise LeaderError(f"{teacher_dir}: model {self.model.name!r} is not a teacher")
        if self.model.schema.drugs.codes != data.drugs.codes:
            raise LeaderError(
                f"{teacher_dir}: the teacher's drug vocabulary differs from {data.root}'s; "
                "distill with the data the teacher was trained on"
            )
        self.size = int(self.model.config.hidden_size or 0)
        self.ids = {s.sample_id for s in data.samples("train")}

    def covers(self, samples: Sequence[Sample]) -> bool:
        """Only training batches need the teacher (not validation or test)."""
        return all(s.sample_id in self.ids for s in samples)

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        with torch.no_grad():
            hidden, _logits = self.model.encode(list(samples))
        return hidden.float()


def teacher_features(
    teacher: Path | None, data: Dataset, online: bool, standardize: bool = False
) -> TeacherFeatures:
    """The teacher's hidden states of the training split, checked to cover every sample
    (exported ones standardized with the training split's statistics when asked)."""
    if teacher is None:
        raise ConfigError("teacher", "required for feature distillation (or set alpha to 0)")
    teacher = Path(teacher)
    if not teacher.is_dir():
        raise ConfigError("teacher", f"{teacher}: directory not found")
    if online:
        return OnlineTeacher(teacher, data)
    table = FeatureTable.load(teacher, data, standardize)
    table.check_covers(data.samples("train"), str(teacher / "features"))
    return table


def export_features(
    teacher_dir: str | Path,
    data: str | Path | Dataset,
    batch_size: int = 16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict:
    """`leader export-features`: the saved teacher's features of every sample of every split."""
    teacher_hash(teacher_dir)  # refuses a directory that is not a teacher, before loading it
    data = data if isinstance(data, Dataset) else Dataset.load(data)
    teacher = load(teacher_dir).model
    return write_features(teacher, teacher_dir, data, batch_size, shard_size, on_progress,
                          on_total)


# --- fit → score → bundle -----------------------------------------------------------------------


def fit_model(
    model: str | MedModel,
    data: str | Path | Dataset,
    out: str | Path,
    config: Config | dict[str, Any] | None = None,
    *,
    teacher: Path | None = None,
    threshold: float | None = None,
    max_drugs: int | None = None,
    force: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    on_info: Callable[[str], None] | None = None,
    export: bool = True,
    calibration: str | None = None,
) -> FitResult:
    """Fit ``model`` (a registered name, or a model instance) on DATA_DIR and bundle it at ``out``.

    ``teacher`` (a TEACHER_DIR with exported features) is read by models that distill when
    their config asks for it (the student with ``alpha > 0``). A model that encodes (the
    teacher) is run once over every split after training when ``export``: the val/test metrics
    come from those passes, which also write ``out/features/`` for distillation.

    The decision rule is the same for every model: ``threshold`` when given, else the value that
    maximises mean F1 on the validation split (never test), optionally capped at ``max_drugs``.
    ``calibration`` (temperature or isotonic) is fitted on the validation split and stored in
    the bundle; the threshold is then tuned, and the metrics scored, on calibrated
    probabilities, as ``recommend`` and ``serve`` will see them.
    """
    check_threshold(threshold, max_drugs)
    if calibration is not None and calibration not in calib.METHODS:
        raise ConfigError("calibration", f"expected one of {', '.join(calib.METHODS)}, "
                          f"got {calibration!r}")
    out = Path(out)
    check_can_write(out, force)  # fail before the long work
    data = data if isinstance(data, Dataset) else Dataset.load(data)
    if isinstance(model, str):
        model = model_class(model)(data.schema, config)
    elif config is not None:
        raise LeaderError("give a model name with a config, or a model instance alone")
    features = _features_for(model, teacher, data)
    # join the launcher's processes first: that gives each its own GPU, where a 4/8-bit
    # backbone is quantized as it loads
    ensure_process_group()
    model.build()  # a bad backbone or length fails here, before anything is written
    main = is_main()
    run_dir = run_dir_for(out)
    thash = teacher_hash(teacher) if features is not None and teacher is not None else None
    identity = {"model": model.name, "config": model.config.identity(),
                "data": data.data_hash, "teacher": thash}
    if main:
        try:
            prepare_run_dir(run_dir, identity, force)
        except OSError as e:
            raise LeaderError(f"{out}: cannot create its run directory {run_dir.name} beside it "
                              f"({e.strerror or e})") from None
    barrier()  # the other ranks write under run_dir only once rank 0 has checked it

    t0 = time.perf_counter()
    model.fit(data, FitContext(run_dir, progress=progress, on_step=on_step,
                               on_info=on_info if main else None, teacher=features))
    t1 = time.perf_counter()
    encoded = {}
    if export and hasattr(model, "encode"):  # one pass: metrics and features
        encoded = {split: encode_shared(model, data.samples(split)) for split in SPLITS}
    probs = {s: torch.sigmoid(logits).numpy() for s, (_, logits) in encoded.items()}
    if "val" not in probs and data.samples("val"):  # scored once: rule, calibration, metrics
        probs["val"] = model.predict_proba(data.samples("val"))
    scorer, cal = model, None
    if calibration not in (None, "none"):
        cal = calibrate_on(model, data, calibration, probs=probs.get("val"))
        scorer = calib.CalibratedModel(model, cal)
        probs = {s: cal.apply(p) for s, p in probs.items()}
    rule = decide_threshold(scorer, data, threshold, max_drugs, val_probs=probs.get("val"))
    metrics = split_metrics(scorer, data, rule["threshold"], max_drugs, probs=probs or None)
    t2 = time.perf_counter()
    notes = _notes(model, teacher, thash)
    if main:
        save_bundle(model, out, metrics=metrics, force=force, rule=rule, calibration=cal,
                    extra={"training": model.fit_summary, **notes,
                           "calibration": cal.method if cal else "none"})
        if encoded:
            index = write_features(model, out, data, encoded=encoded)
            notes["features"] = {"dir": index["dir"], "computed": index["computed"]}
    if getattr(model, "layer_cache", None) is not None:
        model.layer_cache = None  # it lives in run_dir
    barrier()
    if main:
        shutil.rmtree(run_dir, ignore_errors=True)
    timings = {"fit": t1 - t0, "score": t2 - t1, "save": time.perf_counter() - t2}
    return FitResult(model, out, run_dir, metrics, rule, model.fit_summary, timings,
                     {**notes, "teacher_metrics": _teacher_metrics(teacher)})


def _wants_teacher(model: MedModel, data: Dataset) -> bool:
    """Whether this fit needs teacher features (the student resolves α from the data)."""
    if not model.uses_teacher:
        return False
    resolved = model.config.resolved(str(data.manifest.get("source", "")))
    return bool(resolved.alpha)


def _features_for(model: MedModel, teacher: Path | None, data: Dataset) -> Any:
    if not _wants_teacher(model, data):
        if teacher is not None and not model.uses_teacher:
            raise ConfigError("teacher", f"model {model.name} does not learn from a teacher")
        return None
    cfg = model.config
    return teacher_features(teacher, data, bool(getattr(cfg, "online", False)),
                            bool(getattr(cfg, "standardize", False)))


def _notes(model: MedModel, teacher: Path | None, thash: str | None) -> dict[str, Any]:
    """What the bundle records of the model's inputs besides the data (``thash``: the hash of
    the teacher whose features the fit read, None when it read none)."""
    notes: dict[str, Any] = {}
    llm = getattr(model.config, "llm", None)
    if llm is not None:
        notes["llm"] = llm
    if model.uses_teacher:
        notes["distillation"] = {
            "alpha": model.config.alpha,
            "beta": model.config.beta,
            "online": model.config.online,
            "loss": model.config.distill_loss,
            "standardized": bool(model.config.standardize and not model.config.online),
            "teacher": str(teacher) if thash is not None else None,
            "teacher_hash": thash,
        }
    return notes


def _teacher_metrics(teacher: Path | None) -> dict[str, Any] | None:
    """The teacher's own val/test metrics from its bundle, to print beside a student's."""
    if teacher is None or not (Path(teacher) / "metrics.json").is_file():
        return None
    found = read_json(Path(teacher) / "metrics.json")
    return {k: v for k, v in found.items() if k in ("val", "test")} or None
