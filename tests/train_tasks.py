"""A minimal Task for testing the shared training loop (not a product model)."""

from __future__ import annotations

import torch

from leader.data.samples import multi_hot


class Batch(dict):
    def to(self, device):
        return Batch({k: v.to(device) for k, v in self.items()})


class LinearTask:
    """Current diagnoses (multi-hot) → dropout → linear → drug logits."""

    def __init__(self, data, seed: int = 0):
        torch.manual_seed(seed)
        self.vocab = data.vocab
        n_dx, n_drugs = len(data.vocab["diagnoses"]), len(data.drugs)
        self.module = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(n_dx, n_drugs))

    def collate(self, samples):
        return Batch(
            x=multi_hot([s.current.diagnoses for s in samples], self.vocab["diagnoses"]),
            y=multi_hot([s.target for s in samples], self.vocab["drugs"]),
        )

    def loss(self, module, batch):
        logits = module(batch["x"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])
        return loss, {}

    def predict(self, module, batch):
        return torch.sigmoid(module(batch["x"]))

    def targets(self, batch):
        return batch["y"]
