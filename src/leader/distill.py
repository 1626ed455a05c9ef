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
from leader.evaluation import check_threshold, decide_threshold, split_metrics
from leader.models.base import start_from_frequencies
from leader.models.student import Student, StudentModule
from leader.train import (
    LOG,
    TrainConfig,
    TrainResult,
    default_threads,
    prepare_run_dir,
    run_dir_for,
    train,
)

# LEADER's reference weights per data source (α distillation, β alignment)
SOURCE_DEFAULTS = {"mimic3": (0.4, 0.005), "mimic4": (0.8, 0.01)}
FALLBACK_SOURCE = "mimic3"


@dataclass
class DistillOptions:
    alpha: float | None = None  # None: the data source's reference value
    beta: float | None = None
    temperature: float | None = None  # InfoNCE temperature; None: the student's align_temperature
    distill_loss: str = "mse"  # feature distillation: "mse" or "cosine" (1 - cosine similarity)
    standardize: bool = True  # teacher features standardized per dimension (training-split stats)
    online: bool = False
    epochs: int = 50
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 3e-3  # chosen on validation with the default preset (the reference code: 5e-4)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    patience: int = 10
    eval_every: int | None = None  # optimiser steps between validations; None = every epoch
    seed: int = 42
    threshold: float | None = None  # None: tuned on validation (best mean F1); else fixed
    max_drugs: int | None = None  # optional cap on the recommended set size
    threads: int | None = None  # torch threads while training; None: leader.train.default_threads
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
        if out.temperature is not None and out.temperature <= 0:
            raise LeaderError(f"--temperature: expected > 0, got {out.temperature}")
        if out.distill_loss not in FEATURE_LOSSES:
            raise LeaderError(
                f"--distill-loss {out.distill_loss!r}: expected one of {', '.join(FEATURE_LOSSES)}"
            )
        check_threshold(out.threshold, out.max_drugs)
        return out

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            eval_every=self.eval_every,
            seed=self.seed,
            threads=self.threads or default_threads(),
            progress=self.progress,
        )


# --- the loss terms ----------------------------------------------------------------------------


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def feature_loss(
    projected: torch.Tensor, teacher_hidden: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """MSE, or 1 - cosine similarity, between the projected student feature and the teacher's."""
    target = teacher_hidden.to(projected.dtype)
    if kind == "cosine":
        return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()
    return F.mse_loss(projected, target)


FEATURE_LOSSES = ("mse", "cosine")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
    summed: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` among the batch's rows.

    Cosine similarities over ``temperature``; the a→b and b→a cross-entropies averaged, or
    ``summed`` as the reference code does (which doubles the term's weight).
    Rows where ``valid`` is false (no target drug) take no part; fewer than two rows give 0.
    """
    if valid is not None:
        a, b = a[valid], b[valid]
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0  # keeps the graph (DDP) without a signal
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    both = F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
    return both if summed else both / 2


# --- teacher features --------------------------------------------------------------------------


class FeatureTable:
    """Exported teacher hidden states, aligned to samples by sample id.

    ``standardize``: each dimension minus its mean over these rows, over its std. An LLM's
    hidden state is mostly a constant offset in a few dimensions (SmolLM2: ~97% of the mean
    square), which a raw MSE spends itself on; standardized, every dimension's variation counts.
    :meth:`load` reads the TRAINING split only, so the statistics never see validation or test.
    """

    def __init__(self, ids: Sequence[str], hidden: torch.Tensor, standardize: bool = False):
        if len(ids) != hidden.shape[0]:
            raise LeaderError(f"teacher features: {len(ids)} ids for {hidden.shape[0]} rows")
        self.index = {sid: i for i, sid in enumerate(ids)}
        self.hidden = hidden.float()
        self.mean = self.std = None
        if standardize:
            self.mean = self.hidden.mean(0)
            self.std = self.hidden.std(0, unbiased=False).clamp_min(1e-6)
            self.hidden = (self.hidden - self.mean) / self.std

    @property
    def size(self) -> int:
        return int(self.hidden.shape[1])

    @classmethod
    def load(cls, teacher_dir: Path, data: Dataset, standardize: bool = False) -> FeatureTable:
        """The training split's features (and, standardized, the training split's statistics)."""
        from leader.features import load_features

        ids, hidden, _logits = load_features(teacher_dir, data, "train")
        return cls(ids, hidden, standardize)

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

    def __init__(
        self,
        student: StudentModule,
        teacher_size: int | None,
        align: bool,
        align_projection: int = 0,
    ):
        super().__init__()
        self.student = student
        self.align = align
        hidden = student.head.in_features
        self.projector = nn.Linear(hidden, teacher_size) if teacher_size else None
        # the reference projects both sides of the alignment (d -> 64) before InfoNCE
        d = student.sets["drugs"].dim
        project = align and align_projection > 0
        self.align_profile = nn.Linear(d, align_projection) if project else nn.Identity()
        self.align_target = nn.Linear(d, align_projection) if project else nn.Identity()

    def forward(self, code: CodeBatch) -> dict[str, torch.Tensor]:
        logits, feature, profile = self.student(code)
        out = {"logits": logits, "feature": feature, "profile": profile}
        if self.projector is not None:
            out["projected"] = self.projector(feature)
        if self.align:
            out["profile"] = self.align_profile(profile)
            out["target_set"] = self.align_target(self.student.encode_drug_set(code.target))
        return out


class DistillTask:
    """BCE + α · feature MSE + β · profile InfoNCE, as a :class:`leader.train.Task`."""

    def __init__(
        self,
        student: Student,
        alpha: float,
        beta: float,
        temperature: float | None = None,
        teacher: Any = None,  # FeatureTable | OnlineTeacher | None
        distill_loss: str = "mse",
    ):
        if alpha > 0 and teacher is None:
            raise LeaderError("--alpha > 0 needs teacher features (--teacher), or use --alpha 0")
        if student.module is None:
            student.build()
        self.student = student
        cfg = student.config
        self.alpha, self.beta = alpha, beta
        self.temperature = float(cfg["align_temperature"] if temperature is None else temperature)
        self.align_sum = bool(cfg["align_sum"])
        self.wide_l2 = float(cfg["wide_l2"])
        self.teacher, self.distill_loss = teacher, distill_loss
        size = teacher.size if teacher is not None else None
        self.module = DistillModule(
            student.module, size, align=beta > 0, align_projection=int(cfg["align_projection"])
        )

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
        wide = self.student.module.wide
        if wide is not None and self.wide_l2 > 0:
            total = total + self.wide_l2 * wide.penalty()
        if "projected" in out and self.alpha > 0:
            if batch.teacher is None:
                raise LeaderError("a training batch has no teacher features")
            mse = feature_loss(out["projected"], batch.teacher, self.distill_loss)
            total = total + self.alpha * mse
            logs["mse"] = float(mse.detach())
        if "target_set" in out:
            align = info_nce(
                out["profile"],
                out["target_set"],
                self.temperature,
                valid=target.sum(-1) > 0,
                summed=self.align_sum,
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
        return OnlineTeacher(teacher, data)  # raw hidden states: no exported statistics
    table = FeatureTable.load(teacher, data, standardize=options.standardize)
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
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``student`` in place on ``data``; it ends with the best validation weights.

    The teacher's hidden states come from ``features`` when given, else from ``teacher``.
    """
    options = options.resolved(
        str(data.manifest.get("source", "")), bool(student.config["use_profile"])
    )
    torch.manual_seed(options.seed)  # the initial weights are part of the seeded run
    student.build()
    if student.config["frequency_bias"]:
        start_from_frequencies(student.module.head.bias, data)
    student.config["training"] = {k: v for k, v in asdict(options).items() if k != "progress"}
    if features is None:
        features = load_teacher(teacher, data, options)
    task = DistillTask(
        student,
        options.alpha or 0.0,
        options.beta or 0.0,
        options.temperature,
        features,
        options.distill_loss,
    )
    result = train(
        task,
        data.samples("train"),
        data.samples("val"),
        options.train_config(),
        run_dir,
        on_step=on_step,
        on_eval=on_eval,
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
    rule: dict[str, Any] = field(default_factory=dict)  # the decision rule in the bundle
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
    rule = decide_threshold(student, data, resolved.threshold, resolved.max_drugs)
    metrics = split_metrics(student, data, rule["threshold"], resolved.max_drugs)
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
            "loss": resolved.distill_loss,
            "standardized": bool(resolved.standardize and not resolved.online),
            "teacher": str(teacher) if resolved.alpha else None,
            "teacher_hash": thash,
        }
    }
    student.train_log = run_dir / LOG if (run_dir / LOG).is_file() else None
    save_bundle(student, out, metrics=metrics, force=force, extra=extra, rule=rule)
    shutil.rmtree(run_dir, ignore_errors=True)
    return DistillResult(
        out, metrics, teacher_metrics, result, resolved, student.num_parameters(), rule
    )


def _teacher_hash(teacher: Path | None) -> str | None:
    from leader.features import teacher_hash

    return teacher_hash(teacher) if teacher is not None else None
