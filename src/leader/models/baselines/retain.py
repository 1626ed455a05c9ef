"""RETAIN (Choi et al., NeurIPS 2016): reverse-time attention over visits.

Two GRUs read the visits from the most recent backwards: one gives a scalar weight per visit
(alpha, softmax over the visits), the other a vector gate per visit (beta, tanh). The context is
sum_t alpha_t * beta_t * v_t over the visit embeddings v_t, and a linear layer maps it to drug
logits, so each visit's contribution stays interpretable.

Input per visit: the sum of its diagnosis, procedure and *previous visit's* drug embeddings (three
separate tables). The drug stream is shifted by one visit, so the target drugs never leak into
the input (the GAMENet repository's RETAIN baseline feeds the current visit's drugs).

Defaults: the paper used 128-d embeddings and GRUs, dropout 0.6 on the embeddings and 0.6 on the
context, L2 1e-4 and Adadelta; the GAMENet/SafeDrug re-implementations use 64 dims and Adam. Here:
64 dims, dropout 0.5 (embedding) and 0.5 (context), Adam(W) lr 5e-4, 30 epochs with early
stopping on validation PRAUC (patience 10), BCE loss; the output bias starts at the training
log-odds of each drug (training starts from `popular`).

Embedding init: uniform ±0.01, as in the authors' Theano code (``init``). PyTorch's default
N(0, 1) (which the GAMENet repository's RETAIN keeps) makes a visit vector a sum of ~15 unit
Gaussians: with a few hundred training visits Adam cannot move those far in the available steps,
so the model stays a linear map of a *random* projection of the codes and does not beat
`popular` (measured: test PRAUC 0.5381 vs 0.5383 on 600 synthetic patients).
Small data: with mostly single-visit patients alpha is 1 and RETAIN is a gated linear model of
the visit embedding; 0.5 dropout on both ends then halves an already weak signal, so for a few
hundred visits use dropout 0.2 and lr 1e-2 (what tests/test_baselines.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from leader.configs import option
from leader.data.dataset import Dataset
from leader.data.samples import CodeBatch
from leader.models.base import register, start_from_frequencies
from leader.models.baselines.neural import (
    NeuralBaseline,
    NeuralConfig,
    gru_left,
    init_embeddings,
    visit_vectors,
)


class RetainModule(nn.Module):
    def __init__(
        self, sizes: dict[str, int], n_drugs: int, dim: int, dropout: float, init: float
    ):
        super().__init__()
        self.embed = nn.ModuleDict(
            {k: nn.Embedding(n, dim, padding_idx=0) for k, n in sizes.items()}
        )
        self.drop_in = nn.Dropout(dropout)
        self.drop_ctx = nn.Dropout(dropout)
        self.alpha_gru = nn.GRU(dim, dim, batch_first=True)
        self.beta_gru = nn.GRU(dim, dim, batch_first=True)
        self.alpha = nn.Linear(dim, 1)
        self.beta = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, n_drugs)
        init_embeddings(self, init)

    def forward(self, batch: CodeBatch) -> torch.Tensor:
        v = (
            visit_vectors(self.embed["diagnoses"], batch.diagnoses)
            + visit_vectors(self.embed["procedures"], batch.procedures)
            + visit_vectors(self.embed["drugs"], batch.prev_drugs)
        )
        v = self.drop_in(v)
        # reverse time: flipping right-aligned visits puts the current one first, padding last
        rev, rev_mask = v.flip(1), batch.visit_mask.flip(1)
        lengths = batch.visit_mask.sum(1)
        g = gru_left(self.alpha_gru, rev, lengths)
        h = gru_left(self.beta_gru, rev, lengths)
        e = self.alpha(g).squeeze(-1).masked_fill(~rev_mask, float("-inf"))
        alpha = torch.softmax(e, dim=1).unsqueeze(-1)
        beta = torch.tanh(self.beta(h))
        context = (alpha * beta * rev).sum(1)
        return self.out(self.drop_ctx(context))


@dataclass
class RetainConfig(NeuralConfig):
    dim: int = option(64, "Embedding size.", ge=1)
    dropout: float = option(0.5, "Dropout.", ge=0, le=1)
    init: float = option(0.01, "Uniform initialisation bound of the code embeddings.", gt=0)


@register
class Retain(NeuralBaseline):
    name = "retain"
    config_class = RetainConfig
    config: RetainConfig

    def make_module(self) -> nn.Module:
        return RetainModule(
            self.encoder().sizes(), len(self.schema.drugs), self.config.dim,
            self.config.dropout, self.config.init,
        )

    def prepare(self, data: Dataset) -> None:
        start_from_frequencies(self.module.out.bias, data)
