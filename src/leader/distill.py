"""The loss terms of distilling the teacher into the student.

Loss = BCE(student logits, target drugs)
     + α · MSE(projector(student feature), teacher hidden state)      (feature distillation)
     + β · symmetric InfoNCE(profile vector, encoded target drug set)   (profile alignment)

Profile alignment pulls a patient's profile vector (the first visit's pseudo drug record) towards
the drug-set encoding of the drugs actually prescribed at the target visit, and away from the
other patients' sets in the batch, so the profile learns to stand in for a drug record. The
student (:mod:`leader.models.student`) combines the terms; where the teacher's hidden states come
from is :mod:`leader.features`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --- the loss terms ----------------------------------------------------------------------------


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


FEATURE_LOSSES = ("mse", "cosine")


def feature_loss(
    projected: torch.Tensor, teacher_hidden: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """MSE, or 1 - cosine similarity, between the projected student feature and the teacher's."""
    target = teacher_hidden.to(projected.dtype)
    if kind == "cosine":
        return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()
    return F.mse_loss(projected, target)


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
