"""GAMENet (Shang et al., AAAI 2019): graph-augmented memory networks.

1. Diagnoses and procedures of each visit are embedded (sum of code embeddings; the reference
   code takes the mean, see below) and read by two GRUs (hidden 2d); a small MLP turns both
   states into a query per visit.
2. Memory bank: a 2-layer GCN over the drug co-occurrence graph of the training visits (EHR
   graph) minus a learned weight times a GCN over the DDI graph, one vector per drug.
3. Fact 1: attention of the current query over the memory bank. Fact 2 (dynamic memory): the
   earlier visits' queries are keys and their drug sets the values; the current query's
   attention over them weights those drug sets, read through the memory bank.
4. An MLP over [query, fact 1, fact 2] gives the drug logits.

Loss (reference code): 0.9·BCE + 0.01·multi-label margin. With ``ddi_loss`` on, whenever the
batch's predicted DDI rate exceeds ``target_ddi`` (0.05), the DDI penalty (expected interacting
pairs, scaled by 5e-4 as in the reference code) is mixed in with weight exp((target − rate)/T).
The reference code draws this switch at random and anneals T by 0.85 per epoch; we use its
expectation with a fixed T, since the shared loop has no per-epoch hook.

Defaults from the paper / reference code: embeddings 64 (uniform ±0.1 init, as the reference
code's ``init_weights``; PyTorch's N(0, 1) default is far too large for a few hundred training
steps), dropout 0.4, Adam lr 2e-4, 40 epochs, target DDI 0.05, T 0.5. Visits are the last
``max_visits`` (10). The reference code takes one optimiser step per patient; with batches of 32
a small cohort gets far fewer steps, so raise ``lr`` there (see docs/evaluation.md).

Deviation: visit vectors are the *sum* of the code embeddings (``pool="sum"``, as SafeDrug and
PyHealth's GAMENet), not the reference code's mean (``pool="mean"`` restores it). The mean
divides each code's signal and gradient by the visit's ~12 diagnoses; on 500 synthetic
patients (batch 8, lr 1e-3, 15 epochs, chosen on validation) the mean model reached val PRAUC
0.527 (train 0.583, popular 0.520), the sum model 0.554 (train 0.637).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from leader.configs import option
from leader.data.dataset import Dataset
from leader.data.samples import CodeBatch, multi_hot
from leader.models.base import register, start_from_frequencies
from leader.models.baselines.neural import (
    DualGRUQuery,
    NeuralBaseline,
    NeuralConfig,
    batch_ddi_rate,
    ddi_penalty,
    ddi_tensor,
    init_embeddings,
    margin_loss,
    multi_hot_ids,
)
from leader.train import TrainConfig


def normalize(adj: torch.Tensor) -> torch.Tensor:
    """Row-normalised A + I, as in the GAMENet GCN."""
    a = adj + torch.eye(adj.shape[0], device=adj.device)
    return a / a.sum(1, keepdim=True)


class GCN(nn.Module):
    """Two graph convolutions with identity node features: one vector per drug."""

    def __init__(self, n: int, dim: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(n, dim, bias=False)
        self.w2 = nn.Linear(dim, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, adj: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(adj @ self.w1.weight.T))
        return adj @ self.w2(h)


class GamenetModule(nn.Module):
    def __init__(
        self, sizes: dict[str, int], n_drugs: int, dim: int, dropout: float, init: float,
        pool: str = "sum",
    ):
        super().__init__()
        self.n_drugs = n_drugs
        self.encoder = DualGRUQuery(sizes, dim, dropout, pool)
        self.ehr_gcn = GCN(n_drugs, dim, dropout)
        self.ddi_gcn = GCN(n_drugs, dim, dropout)
        self.inter = nn.Parameter(torch.tensor(0.0))
        self.output = nn.Sequential(
            nn.ReLU(), nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, n_drugs)
        )
        init_embeddings(self, init)
        self.register_buffer("ehr_adj", torch.zeros(n_drugs, n_drugs))  # saved: learned from data
        self.register_buffer("ddi_adj", torch.zeros(n_drugs, n_drugs), persistent=False)

    def forward(self, batch: CodeBatch) -> torch.Tensor:
        mask = batch.visit_mask
        queries = self.encoder(batch)  # [B, V, d]
        q = queries[:, -1]
        memory = self.ehr_gcn(normalize(self.ehr_adj)) - self.inter * self.ddi_gcn(
            normalize(self.ddi_adj)
        )  # [D, d]
        fact1 = torch.softmax(q @ memory.T, -1) @ memory
        # dynamic memory: visit t's drugs are the shifted stream's entry at t + 1
        keys, hist = queries[:, :-1], mask[:, :-1]
        values = multi_hot_ids(batch.prev_drugs[:, 1:], self.n_drugs)  # [B, V-1, D]
        scores = torch.einsum("bd,bvd->bv", q, keys).masked_fill(~hist, -1e9)
        weights = torch.softmax(scores, -1) * hist  # all zeros for a first visit
        fact2 = torch.einsum("bv,bvd->bd", weights, values) @ memory
        return self.output(torch.cat([q, fact1, fact2], -1))


@dataclass
class GamenetConfig(NeuralConfig):
    dim: int = option(64, "Embedding size.", ge=1)
    dropout: float = option(0.4, "Dropout.", ge=0, le=1)
    init: float = option(0.1, "Uniform initialisation bound of the code embeddings.", gt=0)
    ddi_loss: bool = option(True, "Add the DDI loss when the batch's DDI rate is above target.")
    target_ddi: float = option(0.05, "Target DDI rate of the DDI loss.", ge=0, le=1)
    temperature: float = option(0.5, "Annealing temperature of the DDI loss.", gt=0)
    pool: str = option("sum", "Pool code embeddings per visit.", choices=("sum", "mean"))
    train: TrainConfig = option(factory=lambda: TrainConfig(epochs=40, lr=2e-4))


@register
class Gamenet(NeuralBaseline):
    name = "gamenet"
    config_class = GamenetConfig
    config: GamenetConfig

    def make_module(self) -> nn.Module:
        module = GamenetModule(
            self.encoder().sizes(), len(self.schema.drugs), self.config.dim,
            self.config.dropout, self.config.init, self.config.pool,
        )
        module.ddi_adj.copy_(ddi_tensor(self.schema))
        return module

    def prepare(self, data: Dataset) -> None:
        """EHR graph: drug pairs prescribed together in a training visit."""
        m = multi_hot([s.target for s in data.samples("train")], self.schema.drugs)
        co = (m.T @ m > 0).float()
        co.fill_diagonal_(0.0)
        self.module.ehr_adj.copy_(co)
        start_from_frequencies(self.module.output[-1].bias, data)

    def extra_loss(self, logits, batch, bce):
        base = 0.9 * bce + 0.01 * margin_loss(logits, batch.target)
        if not self.config.ddi_loss:
            return base, {}
        probs = torch.sigmoid(logits)
        rate = batch_ddi_rate(probs, self.module.ddi_adj)
        if rate <= self.config.target_ddi:
            return base, {"ddi_rate": rate}
        w = math.exp((self.config.target_ddi - rate) / self.config.temperature)
        penalty = ddi_penalty(probs, self.module.ddi_adj)
        return (1 - w) * base + w * penalty, {"ddi_rate": rate, "ddi_weight": w}
