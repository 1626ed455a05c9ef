"""What the neural baselines share: the Task for the training loop, the fit/predict plumbing,
GRUs over right-aligned visits, and the lineage's auxiliary losses.

A baseline subclasses :class:`NeuralBaseline`, sets ``defaults`` (its paper's hyper-parameters)
and implements ``make_module`` (an ``nn.Module`` mapping a :class:`CodeBatch` to drug logits);
``extra_loss`` adds its paper's loss terms to the binary cross-entropy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.data.dataset import Dataset, Schema
from leader.data.samples import CodeBatch, CodeEncoder, Sample
from leader.models.base import MedModel
from leader.train import TrainConfig, default_threads, predict_in_batches, train

TRAIN_KEYS = ("epochs", "lr", "batch_size", "weight_decay", "patience", "seed", "max_steps")
COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "lr": 5e-4,
    "batch_size": 32,
    "weight_decay": 0.0,
    "patience": 10,
    "seed": 42,
    "max_steps": None,
    "max_visits": 10,
    "max_codes": 64,
}


class CodeTask:
    """Adapts a baseline to :func:`leader.train.train` (collate, loss, predict, targets)."""

    def __init__(self, model: NeuralBaseline):
        self.model = model
        self.module = model.module
        self.collate = model.encoder().collate

    def loss(self, module: nn.Module, batch: CodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = module(batch)
        bce = F.binary_cross_entropy_with_logits(logits, batch.target)
        loss, logs = self.model.extra_loss(logits, batch, bce)
        return loss, {"bce": float(bce.detach()), **logs}

    def predict(self, module: nn.Module, batch: CodeBatch) -> torch.Tensor:
        return torch.sigmoid(module(batch))

    def targets(self, batch: CodeBatch) -> torch.Tensor:
        return batch.target


class NeuralBaseline(MedModel):
    """fit = seed, build, train with the shared loop; predict = sigmoid of the logits."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, schema: Schema, config: dict[str, Any] | None = None):
        config = dict(config or {})
        self.progress = bool(config.pop("progress", True))  # display only, not a setting
        self.on_eval = None  # called with (step, val PRAUC) after each validation (tuning)
        super().__init__(schema, {**COMMON_DEFAULTS, **self.defaults, **config})

    def encoder(self) -> CodeEncoder:
        return CodeEncoder(
            self.schema.vocab,
            self.schema.profile_vocab,
            self.config["max_visits"],
            self.config["max_codes"],
        )

    @abstractmethod
    def make_module(self) -> nn.Module:
        """The model's ``nn.Module``: a :class:`CodeBatch` in, drug logits out."""

    def build(self) -> None:
        self.module = self.make_module()

    def prepare(self, data: Dataset) -> None:
        """Fill data-derived buffers (e.g. a co-occurrence graph) before training."""

    def extra_loss(
        self, logits: torch.Tensor, batch: CodeBatch, bce: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return bce, {}

    def fit(self, data: Dataset, run_dir: Path | None = None) -> NeuralBaseline:
        torch.manual_seed(int(self.config["seed"]))
        self.build()
        self.prepare(data)
        config = TrainConfig(
            **{k: self.config[k] for k in TRAIN_KEYS}, progress=self.progress,
            threads=default_threads(),
        )
        result = train(
            CodeTask(self), data.samples("train"), data.samples("val"), config, run_dir,
            on_eval=self.on_eval,
        )
        self.train_result = result
        return self

    def num_parameters(self) -> int:
        """Learned weights only; data-derived buffers (graphs) are not parameters."""
        return int(sum(p.numel() for p in self.module.parameters()))

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return predict_in_batches(CodeTask(self), list(samples), batch_size=256)


# --- building blocks ---------------------------------------------------------------------------


def init_embeddings(module: nn.Module, bound: float) -> None:
    """Uniform(-bound, bound) code embeddings, padding rows kept at zero.

    ``nn.Embedding`` defaults to N(0, 1): a visit vector (a sum of ~15 codes) then has entries of
    size ~4, far larger than what Adam moves a rarely seen code in a few hundred steps, so the
    model is stuck with random projections of its input. The papers' own code starts small
    (RETAIN ±0.01, GAMENet and SafeDrug ±0.1).
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Embedding):
                m.weight.uniform_(-bound, bound)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()


def visit_vectors(embed: nn.Embedding, ids: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Code ids [B, V, L] (0 = padding) → one vector per visit [B, V, d] (sum or mean)."""
    e = embed(ids)  # padding_idx rows are zero
    if reduce == "sum":
        return e.sum(2)
    n = (ids > 0).sum(2, keepdim=True).clamp(min=1)
    return e.sum(2) / n


def gru_left(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A GRU over left-aligned sequences [B, V, d] of ``lengths``; zeros past each length."""
    packed = nn.utils.rnn.pack_padded_sequence(
        x, lengths.cpu(), batch_first=True, enforce_sorted=False
    )
    out, _ = gru(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


def run_gru(gru: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A GRU over right-aligned visits [B, V, d] that never sees the left padding.

    Returns outputs [B, V, h] in the same right-aligned positions (zeros on padding), so
    ``out[:, -1]`` is the state after the current visit.
    """
    B, V, _ = x.shape
    lengths = mask.sum(1)
    steps = torch.arange(V, device=x.device)
    shift = (V - lengths).unsqueeze(1)
    left = torch.gather(x, 1, ((steps + shift) % V).unsqueeze(-1).expand_as(x))
    out = gru_left(gru, left, lengths)
    back = ((steps - shift) % V).unsqueeze(-1).expand(B, V, out.shape[-1])
    return torch.gather(out, 1, back) * mask.unsqueeze(-1)


def margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The lineage's multi-label margin loss (positives listed first, then -1)."""
    n = target.shape[1]
    order = torch.argsort(target, dim=1, descending=True, stable=True)
    labels = torch.where(
        torch.arange(n, device=target.device) < target.sum(1, keepdim=True), order, -1
    )
    return F.multilabel_margin_loss(torch.sigmoid(logits), labels.long())


def ddi_penalty(probs: torch.Tensor, ddi: torch.Tensor, scale: float = 5e-4) -> torch.Tensor:
    """The lineage's DDI loss: ``scale`` · p^T A p per visit (both triangles), batch mean."""
    return scale * torch.einsum("bi,ij,bj->b", probs, ddi, probs).mean()


def ddi_tensor(schema: Schema) -> torch.Tensor:
    return torch.from_numpy(np.asarray(schema.ddi_matrix, dtype=np.float32))


@torch.no_grad()
def batch_ddi_rate(probs: torch.Tensor, ddi: torch.Tensor, threshold: float = 0.5) -> float:
    """Pooled DDI rate of the batch's thresholded predictions (as in :mod:`leader.metrics`)."""
    pred = (probs >= threshold).float()
    n = pred.sum(1)
    pairs = float((n * (n - 1) / 2).sum())
    if pairs == 0:
        return 0.0
    return float(torch.einsum("bi,ij,bj->", pred, torch.triu(ddi, 1), pred)) / pairs


def multi_hot_ids(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Code ids [..., L] (1-based, 0 = padding) → multi-hot [..., n]."""
    out = torch.zeros(*ids.shape[:-1], n + 1, device=ids.device)
    out.scatter_(-1, ids, 1.0)
    return out[..., 1:]


class DualGRUQuery(nn.Module):
    """GAMENet's and SafeDrug's patient encoder: per visit, the diagnosis and procedure codes'
    embeddings pooled into two visit vectors, read by one GRU each (hidden 2d); a ReLU + linear
    layer turns both states into a query per visit, [B, V, d] (right-aligned, zeros on padding).
    """

    def __init__(self, sizes: dict[str, int], dim: int, dropout: float, pool: str = "sum"):
        super().__init__()
        self.pool = pool
        self.embed_dx = nn.Embedding(sizes["diagnoses"], dim, padding_idx=0)
        self.embed_px = nn.Embedding(sizes["procedures"], dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru_dx = nn.GRU(dim, 2 * dim, batch_first=True)
        self.gru_px = nn.GRU(dim, 2 * dim, batch_first=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * dim, dim))

    def forward(self, batch: CodeBatch) -> torch.Tensor:
        mask = batch.visit_mask
        dx = self.drop(visit_vectors(self.embed_dx, batch.diagnoses, self.pool))
        px = self.drop(visit_vectors(self.embed_px, batch.procedures, self.pool))
        states = [run_gru(self.gru_dx, dx, mask), run_gru(self.gru_px, px, mask)]
        return self.query(torch.cat(states, -1))
