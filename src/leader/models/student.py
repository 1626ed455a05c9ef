"""LEADER(S): the small code-based student that serves patients in milliseconds.

Read top to bottom:

1. Each code type (diagnoses, procedures, drugs) has its OWN embedding table (the reference code
   shares one table, so codes of different types collide).
2. Per visit, a set encoder (a small transformer, no positions: a set has no order) turns each
   code set into one vector by masked mean pooling. Empty sets (a visit without procedures,
   padding visits) never enter the transformer: their vector is zero, so no NaNs.
3. The drug stream is shifted by one visit (the collate does that): visit t sees the drugs of
   visit t-1. The patient's first visit has no earlier drugs, so the PROFILE vector (one
   embedding per profile field, concatenated, then linear) stands in for them. This is what lets
   a first-visit patient get a real, profile-dependent prediction.
4. A visit-level transformer per stream over the last K visits (right-aligned, the current
   visit is always last; learned position embeddings count back from the current visit), masked
   mean over visits, concatenation (3·d), MLP 3d → 128 → |drugs|, sigmoid.

The 128-d hidden layer of the MLP is the "student feature" that distillation pulls towards the
teacher's hidden state (see :mod:`leader.distill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from leader.configs import Config, ConfigError, option
from leader.data import sources
from leader.data.dataset import Dataset
from leader.data.samples import CodeBatch, CodeEncoder, Sample
from leader.data.vocab import CODE_KINDS
from leader.distill import bce_loss, feature_loss, info_nce
from leader.errors import LeaderError
from leader.models.base import MedModel, register
from leader.train import FitContext, TrainConfig

BUCKET = 128  # sets per transformer call in large batches (sorted by size: less padding)
# LEADER's reference weights (alpha distillation, beta alignment) come from the data source's
# module (leader.data.sources); a source without them takes MIMIC-III's
FALLBACK_SOURCE = "mimic3"


@dataclass
class StudentConfig(Config):
    """LEADER(S): its architecture, the distillation weights and its training settings."""

    dim: int = option(64, "Code and visit embedding size d.", ge=1)
    hidden: int = option(128, "The MLP's hidden layer: the feature distillation aligns.", ge=1)
    set_layers: int = option(1, "Transformer layers of each per-visit set encoder.", ge=1)
    visit_layers: int = option(1, "Transformer layers of each visit-level encoder.", ge=1)
    heads: int = option(4, "Attention heads (must divide dim).", ge=1)
    ff: int = option(128, "Transformer feed-forward width.", ge=1)
    dropout: float = option(0.1, "Dropout.", ge=0, le=1)
    max_visits: int = option(10, "Last K visits the student reads.", ge=1)
    max_codes: int = option(64, "Codes kept per visit and kind.", ge=1)
    use_profile: bool = option(
        True, "The profile stands in for a first visit's drug record (off: a learned vector).",
        flag="profile",
    )
    alpha: float | None = option(
        None, "Weight of feature distillation (default: 0.4 MIMIC-III, 0.8 MIMIC-IV).", ge=0
    )
    beta: float | None = option(
        None, "Weight of profile alignment (default: 0.005 MIMIC-III, 0.01 MIMIC-IV).", ge=0
    )
    temperature: float = option(0.1, "InfoNCE temperature.", gt=0)
    online: bool = option(
        False, "Run the teacher inside each step instead of reading exported features."
    )
    train: TrainConfig = option(factory=lambda: TrainConfig(epochs=50, lr=5e-4))

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ConfigError("heads", f"must divide dim {self.dim}, got {self.heads}")
        if self.beta and not self.use_profile:
            raise ConfigError("beta", "profile alignment needs the profile; use 0 without it")

    def resolved(self, source: str) -> StudentConfig:
        """α and β filled in from the data source's reference values (stated in the bundle)."""
        alpha, beta = (sources.distill_weights(source)
                       or sources.distill_weights(FALLBACK_SOURCE))
        return self.replace(
            alpha=alpha if self.alpha is None else self.alpha,
            beta=(beta if self.beta is None else self.beta) if self.use_profile else 0.0,
        )

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Bundles of leader 0.1 kept the distillation and training options under
        ``training`` (with the threshold, which now lives in the bundle manifest)."""
        old = raw.pop("training", None)
        if isinstance(old, dict):
            for key in ("alpha", "beta", "temperature", "online"):
                if key in old:
                    raw.setdefault(key, old[key])
            train = {k: v for k, v in old.items() if k in TrainConfig.__dataclass_fields__}
            raw.setdefault("train", train)
        return raw

# the config fields that shape StudentModule
ARCHITECTURE = ("dim", "hidden", "set_layers", "visit_layers", "heads", "ff", "dropout",
                "max_visits", "use_profile")


def _encoder(d: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class SetEncoder(nn.Module):
    """Code ids [..., L] (0 = padding) → one vector per set [..., d]; empty sets give zeros."""

    def __init__(self, vocab_size: int, d: int, heads: int, ff: int, layers: int, dropout: float):
        super().__init__()
        self.dim = d
        self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
        self.encoder = _encoder(d, heads, ff, layers, dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lead = ids.shape[:-1]
        flat = ids.reshape(-1, ids.shape[-1])
        present = flat > 0
        nonempty = present.any(-1)
        out = torch.zeros(flat.shape[0], self.dim, device=ids.device, dtype=self.embed.weight.dtype)
        rows = nonempty.nonzero().squeeze(-1)
        size = len(rows)
        if size > 2 * BUCKET:  # a large batch: sort by set size so that little is padding
            rows, size = rows[torch.argsort(present[rows].sum(-1), stable=True)], BUCKET
        for start in range(0, len(rows), max(size, 1)):
            chunk = rows[start : start + size]
            x, m = flat[chunk], present[chunk]
            width = int(m.any(0).nonzero().max()) + 1  # trim columns that are padding for all
            x, m = x[:, :width], m[:, :width]
            h = self.encoder(self.embed(x), src_key_padding_mask=~m)
            w = m.unsqueeze(-1).to(h.dtype)
            out[chunk] = (h * w).sum(1) / w.sum(1)
        return out.view(*lead, self.dim)


class ProfileEncoder(nn.Module):
    """Profile field ids [B, F] → [B, d]: one embedding per field, concatenated, linear."""

    def __init__(self, field_sizes: Sequence[int], d: int):
        super().__init__()
        self.fields = nn.ModuleList(nn.Embedding(n, d) for n in field_sizes)
        self.proj = nn.Linear(len(field_sizes) * d, d)

    def forward(self, profile: torch.Tensor) -> torch.Tensor:
        parts = [emb(profile[:, i]) for i, emb in enumerate(self.fields)]
        return self.proj(torch.cat(parts, dim=-1))


class VisitEncoder(nn.Module):
    """Visit vectors [B, V, d] (right-aligned, mask [B, V]) → one patient vector [B, d]."""

    def __init__(self, max_visits: int, d: int, heads: int, ff: int, layers: int, dropout: float):
        super().__init__()
        self.position = nn.Embedding(max_visits, d)  # index V-1 = the current visit
        self.encoder = _encoder(d, heads, ff, layers, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x + self.position.weight[-x.shape[1] :], src_key_padding_mask=~mask)
        w = mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class StudentModule(nn.Module):
    def __init__(
        self,
        sizes: dict[str, int],
        profile_sizes: Sequence[int],
        n_drugs: int,
        dim: int = 64,
        hidden: int = 128,
        set_layers: int = 1,
        visit_layers: int = 1,
        heads: int = 4,
        ff: int = 128,
        dropout: float = 0.1,
        max_visits: int = 10,
        use_profile: bool = True,
        **_: Any,
    ):
        super().__init__()
        self.n_drugs = n_drugs
        self.sets = nn.ModuleDict(
            {
                kind: SetEncoder(sizes[kind], dim, heads, ff, set_layers, dropout)
                for kind in CODE_KINDS
            }
        )
        self.use_profile = bool(use_profile) and len(profile_sizes) > 0
        if self.use_profile:
            self.profile = ProfileEncoder(profile_sizes, dim)
        else:
            self.no_record = nn.Parameter(torch.randn(dim) * 0.02)
        self.visits = nn.ModuleDict(
            {
                kind: VisitEncoder(max_visits, dim, heads, ff, visit_layers, dropout)
                for kind in CODE_KINDS
            }
        )
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_drugs)

    def profile_vector(self, profile: torch.Tensor) -> torch.Tensor:
        """The pseudo drug record of a first visit, [B, d]."""
        if self.use_profile:
            return self.profile(profile)
        return self.no_record.expand(profile.shape[0], -1)

    def encode_drug_set(self, multi_hot: torch.Tensor) -> torch.Tensor:
        """A multi-hot drug set [B, |drugs|] through the drug set encoder → [B, d].

        Drug index j has embedding id j + 1 (0 is padding), exactly as the collate numbers them:
        the reference code's profile alignment is off by one here.
        """
        ids = torch.arange(1, multi_hot.shape[-1] + 1, device=multi_hot.device)
        present = multi_hot > 0
        # left-pack the ids of present drugs (sort puts True first, stable keeps vocab order)
        order = torch.sort((~present).to(torch.int8), dim=-1, stable=True).indices
        packed = torch.where(present, ids, torch.zeros_like(ids)).gather(-1, order)
        return self.sets["drugs"](packed)

    def forward(self, batch: CodeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, |drugs|], the 128-d feature [B, hidden], the profile vector [B, d]."""
        keep = batch.visit_mask.any(0)  # drop visit columns that are padding for everyone
        first_col = int(keep.nonzero()[0]) if bool(keep.any()) else batch.visit_mask.shape[1] - 1
        mask = batch.visit_mask[:, first_col:]
        profile = self.profile_vector(batch.profile)
        dx = self.sets["diagnoses"](batch.diagnoses[:, first_col:])
        px = self.sets["procedures"](batch.procedures[:, first_col:])
        md = self.sets["drugs"](batch.prev_drugs[:, first_col:])
        first = batch.first_visit[:, first_col:].unsqueeze(-1)
        md = torch.where(first, profile.unsqueeze(1).to(md.dtype), md)
        patient = torch.cat(
            [
                self.visits["diagnoses"](dx, mask),
                self.visits["procedures"](px, mask),
                self.visits["drugs"](md, mask),
            ],
            dim=-1,
        )
        feature = self.mlp(patient)
        return self.head(feature), feature, profile


# --- distillation: the training task ------------------------------------------------------------


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
    """The student plus the training-only projector; one forward for the whole loss (DDP).

    The projector (linear hidden → H) only exists during training; the bundle holds the student
    alone.
    """

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
    """BCE + α · feature MSE + β · profile InfoNCE, as a :class:`leader.train.Task`.

    ``teacher`` gives the teacher's hidden states of training samples
    (:class:`leader.features.TeacherFeatures`); validation batches need none.
    """

    def __init__(self, student: Student, teacher: Any = None):
        cfg = student.config
        self.alpha, self.beta = float(cfg.alpha or 0.0), float(cfg.beta or 0.0)
        if self.alpha > 0 and teacher is None:
            raise ConfigError("alpha", "feature distillation needs the teacher's features")
        if student.module is None:
            student.build()
        self.temperature = cfg.temperature
        self.student = student
        self.teacher = teacher
        size = teacher.size if teacher is not None else None
        self.module = DistillModule(student.module, size, align=self.beta > 0)

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
            valid = target.sum(-1) > 0
            align = info_nce(out["profile"], out["target_set"], self.temperature, valid=valid)
            total = total + self.beta * align
            logs["align"] = float(align.detach())
        return total, logs

    def predict(self, module: nn.Module, batch: DistillBatch) -> torch.Tensor:
        inner = module.module if hasattr(module, "module") else module  # DDP wrapper
        return torch.sigmoid(inner.student(batch.code)[0])

    def targets(self, batch: DistillBatch) -> torch.Tensor:
        return batch.code.target


# --- the model -----------------------------------------------------------------------------------


@register
class Student(MedModel):
    """LEADER(S) behind the common model interface.

    ``fit`` distills when ``alpha > 0``: the teacher's hidden states of the training samples come
    in the :class:`~leader.train.FitContext` (``context.teacher``). With ``alpha = 0`` it trains
    on the labels (and profile alignment) alone and needs no teacher.
    """

    name = "student"
    config_class = StudentConfig
    config: StudentConfig
    uses_teacher = True

    def __init__(self, schema, config: StudentConfig | dict[str, Any] | None = None):
        super().__init__(schema, config)
        self.module: StudentModule | None = None
        self._encoder: CodeEncoder | None = None

    @property
    def encoder(self) -> CodeEncoder:
        if self._encoder is None:
            self._encoder = CodeEncoder(
                self.schema.vocab,
                self.schema.profile_vocab,
                max_visits=self.config.max_visits,
                max_codes=self.config.max_codes,
            )
        return self._encoder

    def build(self) -> None:
        enc = self.encoder
        arch = {k: v for k, v in self.config.to_dict().items() if k in ARCHITECTURE}
        self.module = StudentModule(enc.sizes(), enc.profile_sizes(), len(self.schema.drugs),
                                    **arch)
        self.module.eval()

    def fit(self, data: Dataset, context: FitContext | None = None) -> Student:
        """Train on ``data``; the weights end at the best validation PRAUC."""
        context = context or FitContext()
        self.config = self.config.resolved(str(data.manifest.get("source", "")))
        if self.config.alpha and context.teacher is None:
            raise ConfigError(
                "alpha", f"feature distillation (alpha {self.config.alpha:g}) needs the "
                "teacher's features; give a teacher, or set alpha to 0 to train without one"
            )
        torch.manual_seed(self.config.train.seed)  # the initial weights are part of the run
        self.build()
        self.run_loop(DistillTask(self, context.teacher), data, context)
        self.module.eval()
        return self

    @torch.inference_mode()
    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 512) -> np.ndarray:
        if self.module is None:
            self.build()
        assert self.module is not None
        self.module.eval()
        out = [
            torch.sigmoid(self.module(self.encoder.collate(samples[i : i + batch_size]))[0])
            for i in range(0, len(samples), batch_size)
        ]
        if not out:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return torch.cat(out).numpy()

