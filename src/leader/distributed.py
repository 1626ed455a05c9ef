"""Sharing one-off work between the processes of a ``torchrun`` / ``accelerate launch`` run.

Why: training splits each epoch across processes (see :mod:`leader.train`), but the work done
once around it (the teacher's layer-cache fill and its feature export) would otherwise run in
full on every process, or on rank 0 alone while the others wait. Here each rank takes every
``world``-th item and the results are joined in the original order. In a single process every
function is a no-op, so callers need no branch.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def world() -> tuple[int, int]:
    """(rank, number of processes) of this run; (0, 1) for a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a single process): the one that writes."""
    return world()[0] == 0


def ensure_process_group() -> tuple[int, int]:
    """Join the launcher's process group (a no-op without a launcher); returns :func:`world`."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState  # deferred on purpose: accelerate is slow to import

        PartialState(cpu=not torch.cuda.is_available())
    return world()


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Join the rows each rank computed for its share ``range(rank, n, world)`` into the
    ``[n, ...]`` tensor in the original order (on every rank). ``local`` is on the CPU."""
    size = world()[1]
    if size == 1:
        return local
    per_rank = -(-n // size)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    backend_cuda = torch.distributed.get_backend() == "nccl"
    send = padded.cuda() if backend_cuda else padded
    parts = [torch.empty_like(send) for _ in range(size)]
    torch.distributed.all_gather(parts, send)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, n, size))
        out[r::size] = part[:count].cpu()
    return out


def encode_shared(model: Any, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(samples)`` with the samples shared between the launcher's processes
    (each encodes every world-th one; all get the whole result)."""
    rank, size = world()
    hidden, logits = model.encode(samples[rank::size])
    return gather_rows(hidden, len(samples)), gather_rows(logits, len(samples))
