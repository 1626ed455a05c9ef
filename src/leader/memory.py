"""A rough peak-memory estimate for fine-tuning a decoder LLM, printed before training.

WHY: a user should know before a long load whether, say, LLaMA-7B at 2,048 tokens fits a 24 GB
or an 80 GB GPU. The estimate counts the weights, the activations that the backward pass keeps
(per token and trained layer: the inputs of every projection, the MLP's intermediate tensors, and
the attention matrix unless attention is memory-efficient), LoRA's optimizer state and a fixed
runtime overhead. It is an estimate: BENCHMARKS.md compares it with measured peaks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

GIB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "4bit": 0.55, "8bit": 1.05}  # k-bit: + scales
RUNTIME_OVERHEAD = 0.6 * GIB  # interpreter, torch and tokenizer libraries, allocator slack


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    activations_gib: float
    total_gib: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"estimated peak memory {self.total_gib:.1f} GiB (weights {self.weights_gib:.1f}, "
            f"activations {self.activations_gib:.1f})"
        )


def memory_budget_gib(device: torch.device) -> float:
    """Memory a training run may plan for: 90% of a GPU, half of the RAM on CPU (which is
    usually shared with other processes)."""
    if device.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(device).total_memory / GIB
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8.0


def estimate_peak(
    config: Any,
    n_params: int,
    *,
    dtype: str,
    batch_tokens: int,
    max_length: int,
    trained_layers: int | None = None,
    checkpointing: bool = False,
    quantize: str | None = None,
    flash_attention: bool = False,
) -> MemoryEstimate:
    """Estimate for a HF decoder ``config`` (hidden_size, intermediate_size, heads, layers).

    ``batch_tokens`` is the padded tokens of the largest batch (rows × longest prompt);
    ``flash_attention`` drops the attention matrices (GPU memory-efficient kernels).
    """
    h = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", 4 * h))
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", heads) or heads) * (h // heads)
    layers = int(config.num_hidden_layers)
    act = BYTES[dtype]
    weights = n_params * BYTES[quantize or dtype]
    # kept for backward per token and layer: norms, q/k/v/o inputs and outputs, the MLP's gate,
    # up, activation and down input, LoRA dropout copies of the projection inputs
    per_token = (10 * h + 2 * kv + 6 * inter) * act
    if not flash_attention:  # scores and softmax, [heads, L] per token, kept in fp32
        per_token += 2 * heads * max_length * 4
    trained = layers if trained_layers is None else min(trained_layers, layers)
    if checkpointing:  # only each layer's input is kept; one layer is recomputed at a time
        activations = batch_tokens * (trained * h * act + per_token)
    else:
        activations = batch_tokens * trained * per_token
    total = weights + activations + RUNTIME_OVERHEAD
    return MemoryEstimate(
        round(weights / GIB, 2), round(activations / GIB, 2), round(total / GIB, 2)
    )
