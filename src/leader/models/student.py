"""LEADER(S): the small code-based student that serves patients in milliseconds.

Read top to bottom:

1. Each code type (diagnoses, procedures, drugs) has its OWN embedding table (the reference code
   shares one table, so codes of different types collide).
2. Per visit, a set encoder (a small transformer, no positions: a set has no order; or the plain
   mean of the embeddings) turns each code set into one vector by masked mean pooling. Empty
   sets (a visit without procedures, padding visits) never enter the transformer: their vector
   is zero, so no NaNs.
3. The drug stream is shifted by one visit (the collate does that): visit t sees the drugs of
   visit t-1. The patient's first visit has no earlier drugs, so the PROFILE vector (one
   embedding per profile field, concatenated, then linear) stands in for them. This is what lets
   a first-visit patient get a real, profile-dependent prediction.
4. A visit-level transformer over the last K visits (right-aligned, the current visit is always
   last), masked mean over visits, concatenation (3·d), MLP 3d → 128 → |drugs|. The reference
   shares one visit transformer between the three streams and gives it no positions.
5. The default preset adds a wide path (logistic-regression features straight to the logits)
   and starts the output bias at the training log-odds; ``preset="reference"`` is the paper's
   code (see PRESETS and docs/student.md).

The MLP's 128-d hidden value before its activation is the "student feature" that distillation
pulls towards the teacher's hidden state (see :mod:`leader.distill`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.artifacts import read_json
from leader.configs import Config, ConfigError, option
from leader.data import sources
from leader.data.dataset import Dataset, Schema
from leader.data.hierarchy import group_ids
from leader.data.samples import CodeBatch, CodeEncoder, Sample
from leader.data.vocab import CODE_KINDS
from leader.distill import FEATURE_LOSSES, bce_loss, feature_loss, info_nce
from leader.errors import LeaderError
from leader.models.base import MODEL_CONFIG, MedModel, register, start_from_frequencies
from leader.train import FitContext, TrainConfig

KINDS = CODE_KINDS
# LEADER's reference weights (alpha distillation, beta alignment) come from the data source's
# module (leader.data.sources); a source without them takes MIMIC-III's
FALLBACK_SOURCE = "mimic3"
WIDE_L2_SAMPLES = 4000  # the training-set size at which wide_l1 / wide_l2 apply unscaled
BATCH_SAMPLES = 4000  # the training-set size up to which train.batch_size applies unscaled
# What each preset changes from the config's defaults; settings given explicitly win.
PRESETS: dict[str, dict[str, Any]] = {
    "leader": {},
    "reference": {"wide": False, "frequency_bias": False, "set_encoder": "transformer",
                  "hierarchy": False},
}


@dataclass
class StudentConfig(Config):
    """LEADER(S): the preset, its architecture, the distillation and alignment settings, and
    the training settings. Build it with :meth:`from_dict` (the CLI, bundles, ``--config``) so
    that a ``preset`` fills every setting not given explicitly."""

    preset: str = option("leader", "leader (this project's default) or reference (the paper's "
                         "code; docs/student.md lists the differences).",
                         choices=tuple(PRESETS))
    dim: int = option(64, "Code and visit embedding size d.", ge=1)
    hidden: int = option(128, "The MLP's hidden layer: the feature distillation aligns.", ge=1)
    set_encoder: str = option("mean", "Per-visit code sets: mean of the embeddings, or a "
                              "transformer (reference).", choices=("mean", "transformer"))
    set_layers: int = option(1, "Transformer layers of each per-visit set encoder.", ge=1)
    visit_layers: int = option(1, "Transformer layers of the visit-level encoder.", ge=1)
    heads: int = option(4, "Attention heads (must divide dim).", ge=1)
    ff: int = option(300, "Transformer feed-forward width.", ge=1)
    dropout: float = option(0.4, "Dropout of the transformer blocks and the MLP.", ge=0, le=1)
    attention_dropout: float = option(0.1, "Dropout on the attention weights.", ge=0, le=1)
    norm_first: bool = option(True, "Pre-norm transformer blocks (the reference).")
    activation: str = option("gelu", "Activation of the transformer blocks.",
                             choices=("gelu", "relu"))
    shared_visit_encoder: bool = option(True, "One visit-level transformer for the three "
                                        "streams (the reference).")
    visit_positions: bool = option(False, "Learned positions counting back from the current "
                                   "visit (the reference has none).")
    feature_before_activation: bool = option(True, "The distilled feature is the MLP's value "
                                             "before its activation (the reference).")
    wide: bool = option(True, "A direct linear path from the current codes, previous drugs and "
                        "profile to the logits.")
    wide_dropout: float = option(0.0, "Drop each input code of the wide path in training.",
                                 ge=0, le=0.99)
    wide_scale: float = option(4.0, "Wide logits = scale x weights (Adam moves them scale x "
                               "faster).", gt=0)
    wide_l1: float = option(1e-3, "L1 on the wide path's logit weights, per drug, at 4,000 "
                            "training samples (see wide_l2_scaled): a code moves few drugs.",
                            ge=0)
    wide_l2: float = option(0.0, "L2 on the wide path's logit weights, per drug, at 4,000 "
                            "training samples (see wide_l2_scaled).", ge=0)
    wide_l2_scaled: bool = option(True, "Scale wide_l1 and wide_l2 by sqrt(4000 / training "
                                  "samples): less shrinkage where there is more evidence.")
    batch_scaled: bool = option(True, "Grow the batch with the cohort: train.batch_size x the "
                                "power of two nearest sqrt(training samples / 4,000), at least "
                                "1x (32 -> 256 at MIMIC-IV's size).")
    hierarchy: bool = option(True, "Add each code's group (ICD category, ATC level 2) to its "
                             "embedding and wide weights: rare codes share their category's.")
    group_presence: bool = option(True, "The wide path counts a group once per visit (is it "
                                  "present?), not once per code of it.")
    frequency_bias: bool = option(True, "Start the output bias at each drug's training "
                                  "log-odds.")
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
    distill_loss: str = option("mse", "Feature distillation loss: mse, or cosine (1 - cosine "
                               "similarity).", choices=FEATURE_LOSSES)
    standardize: bool = option(True, "Standardize the teacher's features per dimension with "
                               "training-split statistics.")
    align_temperature: float = option(1.0, "Profile-alignment InfoNCE temperature.", gt=0)
    align_projection: int = option(64, "A d -> N projection on each side before InfoNCE "
                                   "(0: none).", ge=0)
    align_sum: bool = option(True, "Sum the two InfoNCE directions (the reference); off: their "
                             "mean.")
    online: bool = option(
        False, "Run the teacher inside each step instead of reading exported features."
    )
    train: TrainConfig = option(factory=lambda: TrainConfig(epochs=50, lr=3e-3))

    def wide_penalty(self, n_train: int, weight: float | None = None) -> float:
        """The wide path's L2 weight (or ``weight``, e.g. ``wide_l1``) for ``n_train`` training
        samples. A fixed weight, chosen at 5,000 patients, over-shrinks a larger cohort (the
        student stalled at 50,000) and under-shrinks a smaller one; the square-root rule fitted
        those two sizes and improved validation PRAUC at three others (docs/student.md)."""
        weight = self.wide_l2 if weight is None else weight
        if not self.wide_l2_scaled or n_train <= 0:
            return weight
        return weight * math.sqrt(WIDE_L2_SAMPLES / n_train)

    def batch_for(self, n_train: int) -> int:
        """The batch for ``n_train`` training samples. At a constant learning rate a batch of
        32 leaves MIMIC-IV-sized cohorts in gradient noise: at 154,000 training visits the
        student stopped at logreg's validation PRAUC with it and passed it by 0.014 with 256
        (BENCHMARKS.md (f)); at 4,000 (the benchmark) the rule keeps 32."""
        size = self.train.batch_size
        if not self.batch_scaled or n_train <= BATCH_SAMPLES:
            return size
        return size * 2 ** round(math.log2(math.sqrt(n_train / BATCH_SAMPLES)))

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
    def from_dict(cls, raw: Any, where: str | None = None) -> Self:
        """The preset's settings first, then those given (which win)."""
        if isinstance(raw, dict):
            raw = cls.upgrade(dict(raw))
            raw = {**PRESETS.get(raw.get("preset", "leader"), {}), **raw}
        return super().from_dict(raw, where)

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Settings of leader 0.1: the distillation and training options under ``training``
        (with the threshold, which now lives in the bundle manifest) and ``temperature``."""
        old = raw.pop("training", None)
        if isinstance(old, dict):
            for key in ("alpha", "beta", "temperature", "online"):
                if key in old:
                    raw.setdefault(key, old[key])
            train = {k: v for k, v in old.items() if k in TrainConfig.__dataclass_fields__}
            raw.setdefault("train", train)
        if "temperature" in raw:
            raw.setdefault("align_temperature", raw.pop("temperature"))
        return raw


# the config fields that shape StudentModule
ARCHITECTURE = ("dim", "hidden", "set_layers", "visit_layers", "heads", "ff", "set_encoder",
                "dropout", "attention_dropout", "norm_first", "activation",
                "shared_visit_encoder", "visit_positions", "feature_before_activation", "wide",
                "wide_dropout", "wide_scale", "group_presence", "max_visits", "use_profile")


def _encoder(
    d: int, heads: int, ff: int, layers: int, dropout: float, attention_dropout: float,
    norm_first: bool, activation: str,
) -> nn.TransformerEncoder:
    if activation not in ("gelu", "relu"):
        raise LeaderError(f"student activation {activation!r}: expected gelu or relu")
    layer = nn.TransformerEncoderLayer(
        d, heads, ff, dropout, activation=activation, batch_first=True, norm_first=norm_first
    )
    layer.self_attn.dropout = attention_dropout  # torch's block has one rate; the reference two
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class GroupEmbedding(nn.Module):
    """Code ids [...] → the embedding of each code's group (ICD category, ATC level 2; see
    :mod:`leader.data.hierarchy`) [..., d]; a code without a group, and padding, gives zeros.

    The code → group table is derived from the vocabulary, so it is not saved (non-persistent).
    """

    def __init__(self, groups: Sequence[int], d: int):
        super().__init__()
        table = torch.tensor(list(groups), dtype=torch.long)
        self.register_buffer("of_code", table, persistent=False)
        self.embed = nn.Embedding(int(table.max()) + 1, d, padding_idx=0)

    def bag(self, ids: torch.Tensor, weights: torch.Tensor | None,
            presence: bool = False) -> torch.Tensor:
        """Summed over a set: ids [B, L] (per-code weights [B, L] or None) → [B, d].

        ``presence``: each group of the set counts once (with its first code's weight), however
        many of its codes the set holds: three diabetes codes say "diabetes" once.
        """
        groups = self.of_code[ids]
        if presence:
            groups, order = groups.sort(dim=-1, stable=True)
            first = torch.ones_like(groups, dtype=torch.bool)
            first[:, 1:] = groups[:, 1:] != groups[:, :-1]
            once = first.to(self.embed.weight.dtype)
            weights = once if weights is None else once * weights.gather(-1, order)
        return F.embedding_bag(groups, self.embed.weight, mode="sum",
                               per_sample_weights=weights, padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(self.of_code[ids])


class SetEncoder(nn.Module):
    """Code ids [..., L] (0 = padding) → one vector per set [..., d]; empty sets give zeros.

    All non-empty sets of a batch go through the transformer in ONE call (padding columns that
    no set uses are trimmed): many small calls cost more in overhead than the padding they save.
    """

    def __init__(self, vocab_size: int, d: int, layers: int, kind: str,
                 groups: Sequence[int] | None = None, **block: Any):
        super().__init__()
        if kind not in ("transformer", "mean"):
            raise LeaderError(f"student set_encoder {kind!r}: expected transformer or mean")
        self.dim = d
        self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
        self.group = GroupEmbedding(groups, d) if groups is not None else None
        # "mean": the codes' embeddings averaged, no interaction between codes (cheaper)
        self.encoder = _encoder(d, layers=layers, **block) if kind == "transformer" else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lead = ids.shape[:-1]
        flat = ids.reshape(-1, ids.shape[-1])
        present = flat > 0
        sizes = present.sum(-1)
        rows = (sizes > 0).nonzero().squeeze(-1)
        out = torch.zeros(flat.shape[0], self.dim, device=ids.device, dtype=self.embed.weight.dtype)
        if len(rows):
            width = int(sizes.max())  # sets are left-packed by the collate
            x, m = flat[rows, :width], present[rows, :width]
            h = self.embed(x)
            if self.group is not None:
                h = h + self.group(x)
            if self.encoder is not None:
                h = self.encoder(h, src_key_padding_mask=~m)
            w = m.unsqueeze(-1).to(h.dtype)
            out = out.index_copy(0, rows, (h * w).sum(1) / w.sum(1))
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

    def __init__(self, max_visits: int, d: int, layers: int, positions: bool, **block: Any):
        super().__init__()
        # index V-1 = the current visit; the reference has no positions (a bag of visits)
        self.position = nn.Embedding(max_visits, d) if positions else None
        self.encoder = _encoder(d, layers=layers, **block)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.position is not None:
            x = x + self.position.weight[-x.shape[1] :]
        h = self.encoder(x, src_key_padding_mask=~mask)
        w = mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class WidePath(nn.Module):
    """Logits straight from the current visit's codes, the previous drugs and the profile.

    The logistic-regression features (which beat the deep path alone on additive prescribing
    rules) summed as per-code logit vectors; starts at zero, so training begins at the bias.
    """

    def __init__(
        self,
        sizes: dict[str, int],
        profile_sizes: Sequence[int],
        n_drugs: int,
        dropout: float = 0.0,
        scale: float = 1.0,
        groups: dict[str, Sequence[int]] | None = None,
        presence: bool = False,
    ):
        super().__init__()
        self.dropout, self.scale, self.presence = dropout, scale, presence
        self.codes = nn.ModuleDict(
            {k: nn.EmbeddingBag(sizes[k], n_drugs, mode="sum", padding_idx=0) for k in KINDS}
        )
        # each code's group adds a logit vector of its own (shared by the group's codes)
        self.groups = nn.ModuleDict({k: GroupEmbedding(g, n_drugs) for k, g in
                                     (groups or {}).items()})
        self.fields = nn.ModuleList(nn.Embedding(n, n_drugs) for n in profile_sizes)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, batch: CodeBatch) -> torch.Tensor:
        current = {
            "diagnoses": batch.diagnoses[:, -1],
            "procedures": batch.procedures[:, -1],
            "drugs": batch.prev_drugs[:, -1],
        }
        out = 0
        for k, ids in current.items():
            keep = self._keep(ids)
            out = out + self.codes[k](ids, per_sample_weights=keep)
            if k in self.groups:
                out = out + self.groups[k].bag(ids, keep, self.presence)
        for i, emb in enumerate(self.fields):
            out = out + emb(batch.profile[:, i])
        return out * self.scale

    def penalty(self, power: int = 2) -> torch.Tensor:
        """Sum of squared (power 2) or absolute (power 1) effective weights, averaged per drug
        (as BCE averages)."""
        weights = (p * self.scale for p in self.parameters())
        total = sum((w.abs() if power == 1 else w.square()).sum() for w in weights)
        return total / self.codes["drugs"].weight.shape[1]

    def _keep(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Input-code dropout weights (1/(1-p) for kept codes), or None outside training."""
        if not self.training or self.dropout <= 0:
            return None
        keep = torch.rand(ids.shape, device=ids.device) >= self.dropout
        return keep.to(self.codes["drugs"].weight.dtype) / (1 - self.dropout)


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
        ff: int = 300,
        set_encoder: str = "transformer",
        dropout: float = 0.4,
        attention_dropout: float = 0.1,
        norm_first: bool = True,
        activation: str = "gelu",
        shared_visit_encoder: bool = True,
        visit_positions: bool = False,
        feature_before_activation: bool = True,
        wide: bool = False,
        wide_dropout: float = 0.0,
        wide_scale: float = 1.0,
        group_presence: bool = False,
        max_visits: int = 10,
        use_profile: bool = True,
        groups: dict[str, Sequence[int]] | None = None,
        **_: Any,
    ):
        super().__init__()
        self.n_drugs = n_drugs
        block = dict(
            d=dim, heads=heads, ff=ff, dropout=dropout, attention_dropout=attention_dropout,
            norm_first=bool(norm_first), activation=activation,
        )
        self.sets = nn.ModuleDict(
            {
                kind: SetEncoder(sizes[kind], layers=set_layers, kind=set_encoder,
                                 groups=(groups or {}).get(kind), **block)
                for kind in KINDS
            }
        )
        self.use_profile = bool(use_profile) and len(profile_sizes) > 0
        if self.use_profile:
            self.profile = ProfileEncoder(profile_sizes, dim)
        else:
            self.no_record = nn.Parameter(torch.randn(dim) * 0.02)
        streams = ("shared",) if shared_visit_encoder else KINDS
        self.visits = nn.ModuleDict(
            {
                s: VisitEncoder(max_visits, layers=visit_layers, positions=visit_positions, **block)
                for s in streams
            }
        )
        self.to_hidden = nn.Linear(3 * dim, hidden)
        self.after = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.feature_before_activation = bool(feature_before_activation)
        self.head = nn.Linear(hidden, n_drugs)
        self.wide = (
            WidePath(sizes, profile_sizes, n_drugs, wide_dropout, wide_scale, groups,
                     group_presence)
            if wide else None
        )

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

    def encode_visits(self, streams: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The three visit streams [B, V, d] → [B, 3d]; a shared encoder runs them in one call."""
        if "shared" in self.visits:
            out = self.visits["shared"](torch.cat(streams), mask.repeat(len(streams), 1))
            return torch.cat(out.chunk(len(streams)), dim=-1)
        return torch.cat([self.visits[k](x, mask) for k, x in zip(KINDS, streams, strict=True)], -1)

    def forward(self, batch: CodeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, |drugs|], the distilled feature [B, hidden], the profile vector [B, d]."""
        keep = batch.visit_mask.any(0)  # drop visit columns that are padding for everyone
        first_col = int(keep.nonzero()[0]) if bool(keep.any()) else batch.visit_mask.shape[1] - 1
        mask = batch.visit_mask[:, first_col:]
        profile = self.profile_vector(batch.profile)
        dx = self.sets["diagnoses"](batch.diagnoses[:, first_col:])
        px = self.sets["procedures"](batch.procedures[:, first_col:])
        md = self.sets["drugs"](batch.prev_drugs[:, first_col:])
        first = batch.first_visit[:, first_col:].unsqueeze(-1)
        md = torch.where(first, profile.unsqueeze(1).to(md.dtype), md)
        patient = self.encode_visits([dx, px, md], mask)
        pre = self.to_hidden(patient)
        post = self.after(pre)
        logits = self.head(post)
        if self.wide is not None:
            logits = logits + self.wide(batch)
        return logits, (pre if self.feature_before_activation else post), profile


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

    def __init__(
        self, student: StudentModule, teacher_size: int | None, align: bool, projection: int = 0
    ):
        super().__init__()
        self.student = student
        self.align = align
        hidden = student.head.in_features
        self.projector = nn.Linear(hidden, teacher_size) if teacher_size else None
        # the reference projects both sides of the alignment (d -> 64) before InfoNCE
        d = student.sets["drugs"].dim
        project = align and projection > 0
        self.align_profile = nn.Linear(d, projection) if project else nn.Identity()
        self.align_target = nn.Linear(d, projection) if project else nn.Identity()

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
    """BCE (+ the wide path's L2 and L1) + α · feature loss + β · profile InfoNCE, as a
    :class:`leader.train.Task`.

    ``teacher`` gives the teacher's hidden states of training samples
    (:class:`leader.features.TeacherFeatures`); validation batches need none.
    """

    def __init__(self, student: Student, teacher: Any = None, wide_l2: float | None = None,
                 wide_l1: float | None = None):
        cfg = student.config
        self.wide_l2 = cfg.wide_l2 if wide_l2 is None else wide_l2
        self.wide_l1 = cfg.wide_l1 if wide_l1 is None else wide_l1
        self.alpha, self.beta = float(cfg.alpha or 0.0), float(cfg.beta or 0.0)
        if self.alpha > 0 and teacher is None:
            raise ConfigError("alpha", "feature distillation needs the teacher's features")
        if student.module is None:
            student.build()
        self.cfg = cfg
        self.student = student
        self.teacher = teacher
        size = teacher.size if teacher is not None else None
        self.module = DistillModule(student.module, size, self.beta > 0, cfg.align_projection)

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
        if wide is not None and self.wide_l1 > 0:
            total = total + self.wide_l1 * wide.penalty(power=1)
        if "projected" in out and self.alpha > 0:
            if batch.teacher is None:
                raise LeaderError("a training batch has no teacher features")
            mse = feature_loss(out["projected"], batch.teacher, self.cfg.distill_loss)
            total = total + self.alpha * mse
            logs["mse"] = float(mse.detach())
        if "target_set" in out:
            valid = target.sum(-1) > 0
            align = info_nce(out["profile"], out["target_set"], self.cfg.align_temperature,
                             valid=valid, summed=self.cfg.align_sum)
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
        groups = None
        if self.config.hierarchy:
            groups = {k: group_ids(k, self.schema.vocab[k].codes) for k in KINDS}
        self.module = StudentModule(enc.sizes(), enc.profile_sizes(), len(self.schema.drugs),
                                    groups=groups, **arch)
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
        if self.config.frequency_bias:
            start_from_frequencies(self.module.head.bias, data)
        n_train = data.n_samples("train")
        task = self.distill_task(n_train, context.teacher)
        batch = self.config.batch_for(n_train)
        self.run_loop(task, data, context, self.config.train.replace(batch_size=batch))
        self.fit_summary["batch_size"] = batch  # the batch used, in the bundle manifest
        if self.module.wide is not None:
            self.fit_summary["wide_l2"] = task.wide_l2  # the weights used, in the bundle manifest
            self.fit_summary["wide_l1"] = task.wide_l1
        self.module.eval()
        return self

    def distill_task(self, n_train: int, teacher: Any = None) -> DistillTask:
        """The training task, with the wide path's penalties sized for ``n_train`` training
        samples (the square-root rule of :meth:`StudentConfig.wide_penalty`)."""
        cfg = self.config
        return DistillTask(self, teacher, cfg.wide_penalty(n_train),
                           cfg.wide_penalty(n_train, cfg.wide_l1))

    @classmethod
    def load(cls, directory: Path, schema: Schema) -> Self:
        """Refuse, clearly, a bundle saved before presets existed (other layers and names)."""
        raw = read_json(directory / MODEL_CONFIG)
        if not isinstance(raw, dict) or "preset" not in (raw.get("config") or {}):
            raise LeaderError(
                f"{directory}: a student bundle from an older leader (no 'preset' in its "
                "config); train it again with `leader distill`"
            )
        return super().load(directory, schema)

    @classmethod
    def read_config(cls, directory: Path) -> StudentConfig:
        """A bundle saved before ``hierarchy``, ``group_presence``, ``wide_l1`` or
        ``batch_scaled`` existed was trained without it."""
        config = super().read_config(directory)
        raw = read_json(directory / MODEL_CONFIG)["config"]
        absent = {"hierarchy": False, "group_presence": False, "wide_l1": 0.0,
                  "batch_scaled": False}
        older = {k: v for k, v in absent.items() if k not in raw}
        return config.replace(**older) if older else config

    @torch.inference_mode()
    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 512) -> np.ndarray:
        if self.module is None:
            self.build()
        assert self.module is not None
        self.module.eval()
        # where training left it: on a GPU after a fit there, while batches are collated on CPU
        device = next(self.module.parameters()).device
        out = [
            torch.sigmoid(
                self.module(self.encoder.collate(samples[i : i + batch_size]).to(device))[0]
            ).cpu()
            for i in range(0, len(samples), batch_size)
        ]
        if not out:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return torch.cat(out).numpy()

