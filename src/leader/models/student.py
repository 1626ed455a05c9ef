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

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leader.artifacts import read_json
from leader.data.dataset import Dataset, Schema
from leader.data.samples import CodeBatch, CodeEncoder, Sample
from leader.errors import LeaderError
from leader.models.base import MODEL_CONFIG, MedModel, register

TRAIN_LOG = "train_log.jsonl"
KINDS = ("diagnoses", "procedures", "drugs")
DEFAULTS: dict[str, Any] = {
    "preset": "leader",  # "leader" (this default) or "reference" (the paper's code, see PRESETS)
    "dim": 64,  # code / visit embedding size d
    "hidden": 128,  # the MLP's hidden layer: the feature distillation aligns
    "set_encoder": "mean",  # per-visit code sets: "transformer" (reference) or "mean"
    "set_layers": 1,
    "visit_layers": 1,
    "heads": 4,
    "ff": 300,  # transformer feed-forward width
    "dropout": 0.4,  # transformer blocks and the MLP
    "attention_dropout": 0.1,  # on the attention weights
    "norm_first": True,  # pre-norm blocks (the reference); False: torch's post-norm block
    "activation": "gelu",  # of the transformer blocks: "gelu" (reference) or "relu"
    "shared_visit_encoder": True,  # one visit-level transformer for the three streams
    "visit_positions": False,  # learned positions counting back from the current visit
    "feature_before_activation": True,  # the distilled feature: the MLP's pre-activation value
    "wide": True,  # a direct linear path: current codes, previous drugs, profile -> logits
    "wide_dropout": 0.0,  # drop each input code of the wide path in training (an adaptive L2)
    "wide_scale": 4.0,  # wide logits = scale x weights: Adam then moves them scale x faster
    "wide_l2": 1e-3,  # L2 on the wide path's logit weights, per drug (logreg C=1: 1/(2 N_train))
    "frequency_bias": True,  # output bias started at each drug's training log-odds
    "align_temperature": 1.0,  # profile-alignment InfoNCE temperature
    "align_projection": 64,  # a d->64 projection each side before InfoNCE; 0: none
    "align_sum": True,  # sum the two InfoNCE directions (reference); False: their mean
    "max_visits": 10,  # K: the last K visits, always including the current one
    "max_codes": 64,  # per set
    "use_profile": True,  # False: first visits get a learned "no record" vector
}
# What each preset changes from DEFAULTS; explicit config keys win over the preset.
PRESETS: dict[str, dict[str, Any]] = {
    "leader": {},
    "reference": {"wide": False, "frequency_bias": False, "set_encoder": "transformer"},
}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS, then the preset's changes, then the given keys; unknown presets are refused."""
    given = dict(config or {})
    preset = given.get("preset", DEFAULTS["preset"])
    if preset not in PRESETS:
        raise LeaderError(f"student preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return {**DEFAULTS, **PRESETS[preset], **given}


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


class SetEncoder(nn.Module):
    """Code ids [..., L] (0 = padding) → one vector per set [..., d]; empty sets give zeros.

    All non-empty sets of a batch go through the transformer in ONE call (padding columns that
    no set uses are trimmed): many small calls cost more in overhead than the padding they save.
    """

    def __init__(self, vocab_size: int, d: int, layers: int, kind: str, **block: Any):
        super().__init__()
        if kind not in ("transformer", "mean"):
            raise LeaderError(f"student set_encoder {kind!r}: expected transformer or mean")
        self.dim = d
        self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
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
    ):
        super().__init__()
        self.dropout, self.scale = dropout, scale
        self.codes = nn.ModuleDict(
            {k: nn.EmbeddingBag(sizes[k], n_drugs, mode="sum", padding_idx=0) for k in KINDS}
        )
        self.fields = nn.ModuleList(nn.Embedding(n, n_drugs) for n in profile_sizes)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, batch: CodeBatch) -> torch.Tensor:
        current = {
            "diagnoses": batch.diagnoses[:, -1],
            "procedures": batch.procedures[:, -1],
            "drugs": batch.prev_drugs[:, -1],
        }
        out = sum(self.codes[k](ids, per_sample_weights=self._keep(ids)) for k, ids in
                  current.items())
        for i, emb in enumerate(self.fields):
            out = out + emb(batch.profile[:, i])
        return out * self.scale

    def penalty(self) -> torch.Tensor:
        """Sum of squared effective weights over drugs, averaged per drug (as BCE averages)."""
        total = sum((p * self.scale).pow(2).sum() for p in self.parameters())
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
        max_visits: int = 10,
        use_profile: bool = True,
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
                kind: SetEncoder(sizes[kind], layers=set_layers, kind=set_encoder, **block)
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
            WidePath(sizes, profile_sizes, n_drugs, wide_dropout, wide_scale) if wide else None
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


@register
class Student(MedModel):
    """LEADER(S) behind the common model interface; trained by :func:`leader.distill.fit`."""

    name = "student"

    def __init__(self, schema: Schema, config: dict[str, Any] | None = None):
        super().__init__(schema, resolve_config(config))
        self.module: StudentModule | None = None
        self.train_log: Path | None = None  # copied into the bundle by ``save`` when set

    @property
    def encoder(self) -> CodeEncoder:
        if getattr(self, "_encoder", None) is None:
            self._encoder = CodeEncoder(
                self.schema.vocab,
                self.schema.profile_vocab,
                max_visits=int(self.config["max_visits"]),
                max_codes=int(self.config["max_codes"]),
            )
        return self._encoder

    def build(self) -> None:
        enc = self.encoder
        self.module = StudentModule(
            enc.sizes(), enc.profile_sizes(), len(self.schema.drugs), **self.config
        )
        self.module.eval()

    def fit(
        self,
        data: Dataset,
        run_dir: Path | None = None,
        teacher: Path | None = None,
        **options: Any,
    ) -> Student:
        """Train on ``data`` (distilling from ``teacher`` when alpha > 0); see leader.distill."""
        from leader.distill import DistillOptions, fit

        fit(self, data, DistillOptions(**options), teacher=teacher, run_dir=run_dir)
        return self

    @classmethod
    def load(cls, directory: Path, schema: Schema) -> MedModel:
        """Refuse, clearly, a bundle saved before presets existed (other layers and names)."""
        if "preset" not in read_json(directory / MODEL_CONFIG).get("config", {}):
            raise LeaderError(
                f"{directory}: a student bundle from an older leader (no 'preset' in its "
                "config); train it again with `leader distill`"
            )
        return super().load(directory, schema)

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.train_log is not None and self.train_log.is_file():
            shutil.copyfile(self.train_log, directory / TRAIN_LOG)

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
