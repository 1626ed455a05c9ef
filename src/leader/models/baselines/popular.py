"""Two reference points that need no learning: the most frequent drugs, and last visit's drugs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from leader.data.dataset import Dataset
from leader.data.samples import Sample, multi_hot
from leader.models.base import MedModel, register
from leader.train import FitContext


@register
class Popular(MedModel):
    """Scores every drug by its share of training visits: the same ranking for everyone."""

    name = "popular"

    def fit(self, data: Dataset, context: FitContext | None = None) -> Popular:
        train = data.samples("train")
        self.frequency = multi_hot([s.target for s in train], self.schema.drugs).mean(0)
        return self

    def build(self) -> None:
        self.frequency = torch.zeros(len(self.schema.drugs))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"frequency": self.frequency}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.frequency = tensors["frequency"]

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return np.tile(self.frequency.numpy(), (len(samples), 1))


@register
class RepeatLast(Popular):
    """Prescribes the previous visit's drugs again; first visits fall back to ``popular``.

    Repeated drugs score 1, everything else its training frequency, so the ranking (PRAUC) is
    still defined below the repeated set.
    """

    name = "repeat-last"

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        scores = super().predict_proba(samples)
        previous = multi_hot(
            [s.visits[-2].drugs if len(s.visits) > 1 else () for s in samples], self.schema.drugs
        ).numpy()
        return np.maximum(scores, previous)
