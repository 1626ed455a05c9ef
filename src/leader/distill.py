"""Distilling the teacher into the student: the three loss terms, the teacher features, the run.

Loss = BCE(student logits, target drugs)
     + α · MSE(projector(student 128-d feature), teacher hidden state)      (feature distillation)
     + β · symmetric InfoNCE(profile vector, encoded target drug set)       (profile alignment)

The projector (linear 128 → H) only exists during training; the bundle holds the student alone.
Teacher hidden states come from the features the teacher exported (``leader export-features``),
looked up by sample id (offline, the default), or from the teacher run inside each step under
``no_grad`` (``online``). ``α = 0`` needs no teacher at all.

Profile alignment pulls a patient's profile vector (the first visit's pseudo drug record) towards
the drug-set encoding of the drugs actually prescribed at the target visit, and away from the
other patients' sets in the batch, so the profile learns to stand in for a drug record.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leader.artifacts import check_can_write, read_json
from leader.data.dataset import Dataset
from leader.data.samples import CodeBatch, Sample
from leader.errors import LeaderError
from leader.evaluation import split_metrics
from leader.models.student import Student, StudentModule
from leader.train import LOG, TrainConfig, TrainResult, prepare_run_dir, run_dir_for, train

# LEADER's reference weights per data source (α distillation, β alignment)
SOURCE_DEFAULTS = {"mimic3": (0.4, 0.005), "mimic4": (0.8, 0.01)}
FALLBACK_SOURCE = "mimic3"


@dataclass
class DistillOptions:
    alpha: float | None = None  # None: the data source's reference value
    beta: float | None = None
    temperature: float = 0.1  # InfoNCE temperature on cosine similarities
    online: bool = False
    epochs: int = 50
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    patience: int = 10
    eval_every: int | None = None  # optimiser steps between validations; None = every epoch
    seed: int = 42
    threshold: float = 0.5
    progress: bool = True

    def resolved(self, source: str, use_profile: bool = True) -> DistillOptions:
        """Fill α and β from the source's reference values; no profile means no alignment."""
        alpha, beta = SOURCE_DEFAULTS.get(source, SOURCE_DEFAULTS[FALLBACK_SOURCE])
        out = DistillOptions(**{**asdict(self)})
        out.alpha = alpha if self.alpha is None else float(self.alpha)
        if not use_profile:
            if self.beta:
                raise LeaderError(
                    "--beta: profile alignment needs the profile; use --beta 0 with --no-profile"
                )
            out.beta = 0.0
        else:
            out.beta = beta if self.beta is None else float(self.beta)
        if out.alpha < 0 or out.beta < 0:
            raise LeaderError(f"--alpha/--beta: expected >= 0, got {out.alpha}/{out.beta}")
        if out.temperature <= 0:
            raise LeaderError(f"--temperature: expected > 0, got {out.temperature}")
        if not 0.0 <= out.threshold <= 1.0:
            raise LeaderError(f"--threshold: expected a number in [0, 1], got {out.threshold}")
        return out

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            eval_every=self.eval_every,
            seed=self.seed,
            progress=self.progress,
        )


# --- the loss terms ----------------------------------------------------------------------------


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def feature_loss(projected: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """MSE between the projected student feature and the teacher's hidden state."""
    return F.mse_loss(projected, teacher_hidden.to(projected.dtype))


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` among the batch's rows.

    Cosine similarities over ``temperature``; the mean of the a→b and b→a cross-entropies.
    Rows where ``valid`` is false (no target drug) take no part; fewer than two rows give 0.
    """
    if valid is not None:
        a, b = a[valid], b[valid]
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0  # keeps the graph (DDP) without a signal
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# --- teacher features --------------------------------------------------------------------------


class FeatureTable:
    """Exported teacher hidden states, aligned to samples by sample id."""

    def __init__(self, ids: Sequence[str], hidden: torch.Tensor):
        if len(ids) != hidden.shape[0]:
            raise LeaderError(f"teacher features: {len(ids)} ids for {hidden.shape[0]} rows")
        self.index = {sid: i for i, sid in enumerate(ids)}
        self.hidden = hidden.float()

    @property
    def size(self) -> int:
        return int(self.hidden.shape[1])

    @classmethod
    def load(cls, teacher_dir: Path, data: Dataset, split: str = "train") -> FeatureTable:
        from leader.features import load_features

        ids, hidden, _logits = load_features(teacher_dir, data, split)
        return cls(ids, hidden)

    def check_covers(self, samples: Sequence[Sample], where: str) -> None:
        missing = [s.sample_id for s in samples if s.sample_id not in self.index]
        if missing:
            raise LeaderError(
                f"{where}: no teacher features for {len(missing)} of {len(samples)} training "
                f"samples (e.g. {missing[0]!r}); run `leader export-features` for this data"
            )

    def covers(self, samples: Sequence[Sample]) -> bool:
        return all(s.sample_id in self.index for s in samples)

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        rows = [self.index[s.sample_id] for s in samples]
        return self.hidden[torch.tensor(rows, dtype=torch.long)]


class OnlineTeacher:
    """The teacher run on each training batch (no_grad), instead of exported features.

    Slower by the teacher's forward per step, but needs no export and always matches the
    teacher's current weights.
    """

    def __init__(self, teacher_dir: Path, data: Dataset):
        from leader.bundle import load

        self.model = load(teacher_dir).model
        if not hasattr(self.model, "encode"):
            raise LeaderError(f"{teacher_dir}: model {self.model.name!r} is not a teacher")
        if self.model.schema.drugs.codes != data.drugs.codes:
            raise LeaderError(
                f"{teacher_dir}: the teacher's drug vocabulary differs from {data.root}'s; "
                "distill with the data the teacher was trained on"
            )
        self.size = int(self.model.config.get("hidden_size", 0))
        self.ids = {s.sample_id for s in data.samples("train")}

    def covers(self, samples: Sequence[Sample]) -> bool:
        """Only training batches need the teacher (not validation or test)."""
        return all(s.sample_id in self.ids for s in samples)

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        with torch.no_grad():
            hidden, _logits = self.model.encode(list(samples))
        return hidden.float()


# --- the task the shared training loop runs ----------------------------------------------------


@dataclass
class DistillBatch:
    code: CodeBatch
    teacher: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> DistillBatch:
        teacher = self.teacher.to(device) if self.teacher is not None else None
        return DistillBatch(self.code.to(device), teacher)

    def __len__(self) -> int:
        return len(self.code)


class DistillModule(nn.Module):
    """The student plus the training-only projector; one forward for the whole loss (DDP)."""

    def __init__(self, student: StudentModule, teacher_size: int | None, align: bool):
        super().__init__()
        self.student = student
        self.align = align
        hidden = student.head.in_features
        self.projector = nn.Linear(hidden, teacher_size) if teacher_size else None

    def forward(self, code: CodeBatch) -> dict[str, torch.Tensor]:
        logits, feature, profile = self.student(code)
        out = {"logits": logits, "feature": feature, "profile": profile}
        if self.projector is not None:
            out["projected"] = self.projector(feature)
        if self.align:
            out["target_set"] = self.student.encode_drug_set(code.target)
        return out


class DistillTask:
    """BCE + α · feature MSE + β · profile InfoNCE, as a :class:`leader.train.Task`."""

    def __init__(
        self,
        student: Student,
        alpha: float,
        beta: float,
        temperature: float = 0.1,
        teacher: Any = None,  # FeatureTable | OnlineTeacher | None
    ):
        if alpha > 0 and teacher is None:
            raise LeaderError("--alpha > 0 needs teacher features (--teacher), or use --alpha 0")
        if student.module is None:
            student.build()
        self.student = student
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.teacher = teacher
        size = teacher.size if teacher is not None else None
        self.module = DistillModule(student.module, size, align=beta > 0)

    def collate(self, samples: Sequence[Sample]) -> DistillBatch:
        code = self.student.encoder.collate(samples)
        teacher = None
        if self.teacher is not None and self.alpha > 0 and self.teacher.covers(samples):
            teacher = self.teacher(samples)  # validation and test batches need none
        return DistillBatch(code, teacher)

    def loss(self, module: nn.Module, batch: DistillBatch) -> tuple[torch.Tensor, dict[str, float]]:
        out = module(batch.code)
        target = batch.code.target
        bce = bce_loss(out["logits"], target)
        total, logs = bce, {"bce": float(bce.detach())}
        if "projected" in out and self.alpha > 0:
            if batch.teacher is None:
                raise LeaderError("a training batch has no teacher features")
            mse = feature_loss(out["projected"], batch.teacher)
            total = total + self.alpha * mse
            logs["mse"] = float(mse.detach())
        if "target_set" in out:
            align = info_nce(
                out["profile"], out["target_set"], self.temperature, valid=target.sum(-1) > 0
            )
            total = total + self.beta * align
            logs["align"] = float(align.detach())
        return total, logs

    def predict(self, module: nn.Module, batch: DistillBatch) -> torch.Tensor:
        inner = module.module if hasattr(module, "module") else module  # DDP wrapper
        return torch.sigmoid(inner.student(batch.code)[0])

    def targets(self, batch: DistillBatch) -> torch.Tensor:
        return batch.code.target


# --- training and evaluation -------------------------------------------------------------------


def load_teacher(teacher: Path | None, data: Dataset, options: DistillOptions) -> Any:
    """Teacher features for the training split (or the online teacher); None when α = 0."""
    if not options.alpha:
        return None
    if teacher is None:
        raise LeaderError("--teacher: required when --alpha > 0 (use --alpha 0 to train alone)")
    teacher = Path(teacher)
    if not teacher.is_dir():
        raise LeaderError(f"--teacher {teacher}: directory not found")
    if options.online:
        return OnlineTeacher(teacher, data)
    table = FeatureTable.load(teacher, data, "train")
    table.check_covers(data.samples("train"), str(teacher / "features"))
    return table


def fit(
    student: Student,
    data: Dataset,
    options: DistillOptions,
    teacher: Path | None = None,
    run_dir: Path | None = None,
    features: FeatureTable | OnlineTeacher | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``student`` in place on ``data``; it ends with the best validation weights.

    The teacher's hidden states come from ``features`` when given, else from ``teacher``.
    """
    options = options.resolved(
        str(data.manifest.get("source", "")), bool(student.config["use_profile"])
    )
    torch.manual_seed(options.seed)  # the initial weights are part of the seeded run
    student.build()
    student.config["training"] = {k: v for k, v in asdict(options).items() if k != "progress"}
    if features is None:
        features = load_teacher(teacher, data, options)
    task = DistillTask(
        student, options.alpha or 0.0, options.beta or 0.0, options.temperature, features
    )
    result = train(
        task,
        data.samples("train"),
        data.samples("val"),
        options.train_config(),
        run_dir,
        on_step=on_step,
    )
    student.module.eval()
    return result


@dataclass
class DistillResult:
    out: Path
    metrics: dict[str, dict[str, float]]
    teacher_metrics: dict[str, dict[str, float]] | None  # the teacher's val/test metrics
    train: TrainResult
    options: DistillOptions
    parameters: int
    notes: list[str] = field(default_factory=list)


def distill(
    data_dir: Path,
    out: Path,
    teacher: Path | None = None,
    options: DistillOptions | None = None,
    model_config: dict[str, Any] | None = None,
    force: bool = False,
) -> DistillResult:
    """``leader distill``: train a student, evaluate it on val/test, save the MODEL_DIR bundle.

    Checkpoints go to ``.<out>.run/`` beside ``out``; rerunning the same command after a kill
    resumes there. Other options than the interrupted run's need ``force`` (start again).
    """
    from leader.bundle import save_bundle

    options = options or DistillOptions()
    out = Path(out)
    check_can_write(out, force)  # fail before training, not after
    data = Dataset.load(data_dir)
    student = Student(data.schema, model_config)
    resolved = options.resolved(str(data.manifest.get("source", "")), student.config["use_profile"])
    features = load_teacher(teacher, data, resolved)  # bad teacher input fails here, early
    thash = _teacher_hash(teacher) if resolved.alpha else None
    run_dir = run_dir_for(out)
    compared = {k: v for k, v in asdict(resolved).items() if k != "progress"}
    prepare_run_dir(
        run_dir,
        {
            "model": student.config,
            "options": compared,
            "teacher": thash,
            "data": data.data_hash,
        },
        force,
    )
    result = fit(student, data, resolved, run_dir=run_dir, features=features)
    metrics = split_metrics(student, data, resolved.threshold)
    metrics["training"] = {
        "best_val_prauc": result.best_score,
        "best_step": result.best_step,
        "steps": result.steps,
    }
    teacher_metrics = None
    if teacher is not None and (Path(teacher) / "metrics.json").is_file():
        found = read_json(Path(teacher) / "metrics.json")
        teacher_metrics = {k: v for k, v in found.items() if k in ("val", "test")} or None
    extra = {
        "distillation": {
            "alpha": resolved.alpha,
            "beta": resolved.beta,
            "online": resolved.online,
            "teacher": str(teacher) if resolved.alpha else None,
            "teacher_hash": thash,
        }
    }
    student.train_log = run_dir / LOG if (run_dir / LOG).is_file() else None
    save_bundle(
        student, out, threshold=resolved.threshold, metrics=metrics, force=force, extra=extra
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    return DistillResult(out, metrics, teacher_metrics, result, resolved, student.num_parameters())


def _teacher_hash(teacher: Path | None) -> str | None:
    from leader.features import teacher_hash

    return teacher_hash(teacher) if teacher is not None else None
