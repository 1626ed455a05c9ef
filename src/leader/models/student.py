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

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leader.data.dataset import Dataset, Schema
from leader.data.samples import CodeBatch, CodeEncoder, Sample
from leader.models.base import MedModel, register

TRAIN_LOG = "train_log.jsonl"
BUCKET = 128  # sets per transformer call in large batches (sorted by size: less padding)
DEFAULTS: dict[str, Any] = {
    "dim": 64,  # code / visit embedding size d
    "hidden": 128,  # the MLP's hidden layer: the feature distillation aligns
    "set_layers": 1,
    "visit_layers": 1,
    "heads": 4,
    "ff": 128,  # transformer feed-forward width
    "dropout": 0.1,
    "max_visits": 10,  # K: the last K visits, always including the current one
    "max_codes": 64,  # per set
    "use_profile": True,  # False: first visits get a learned "no record" vector
}


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
                for kind in ("diagnoses", "procedures", "drugs")
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
                for kind in ("diagnoses", "procedures", "drugs")
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


@register
class Student(MedModel):
    """LEADER(S) behind the common model interface; trained by :func:`leader.distill.fit`."""

    name = "student"

    def __init__(self, schema: Schema, config: dict[str, Any] | None = None):
        super().__init__(schema, {**DEFAULTS, **(config or {})})
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
