"""A peak-memory estimate for fine-tuning a decoder LLM with LoRA, printed before training.

WHY: a user should know before a long load whether, say, LLaMA-7B at 2,048 tokens fits a 24 GB
or an 80 GB GPU, and ``--gradient-checkpointing auto`` decides from it. The estimate counts the
weights, the tensors the backward pass keeps, LoRA's gradients and AdamW state, and a fixed
runtime overhead. What the backward pass keeps per token of a trained Llama-style block was
read off autograd's saved tensors (tests/test_memory.py checks the count against them):

- the frozen projections keep nothing but their weights (no weight gradient is needed);
- each RMSNorm keeps its input in fp32 (transformers normalises in fp32);
- each LoRA adapter keeps its (dropped-out) input, the dropout mask, and its rank-r product;
- the gated MLP keeps the gate, its activation and the up projection;
- attention keeps q, k, v and its output, plus the expanded padding mask (one row of
  ``max_length`` per token) when a mask is passed; a kernel that is not memory-efficient
  (``eager``) keeps the softmax matrix too.

On CPU a share for the allocator comes on top (see ``CPU_ALLOCATOR_SLACK``); BENCHMARKS.md
compares the estimate with measured peaks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

GIB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "4bit": 0.55, "8bit": 1.05}  # k-bit: + scales
RUNTIME_OVERHEAD = 0.6 * GIB  # interpreter, torch and tokenizer libraries
# On CPU, glibc's malloc keeps much of what a step frees, so the resident peak runs above the
# live tensors by a share of the activations the step creates (all trained blocks' in full,
# recomputed or not). Measured over three steps of smollm2 (1 x 2,048, 4 x 512 and 8 x 256
# tokens; BENCHMARKS.md, Teacher, "The memory estimate, recounted"): 0.62-0.66 of them in
# bf16, 0.85-0.97 in fp32, 0.39-0.62 in fp32 without the fast paths; 0.28 (bf16) and 0.53
# (fp32) with gradient checkpointing
CPU_ALLOCATOR_SLACK = {False: 0.8, True: 0.5}  # by checkpointing
NORMS_PER_BLOCK = 2  # before attention and before the MLP
GATED_MLP_KEPT = 3  # gate, act(gate), up: what the backward of act(gate) * up needs
ADAM_BYTES = 4 + 8  # an fp32 gradient and two AdamW moments per trainable parameter
Attention = Literal["memory-efficient", "masked", "eager"]


@dataclass(frozen=True)
class Adapters:
    """The LoRA adapters of one trained block, as the estimate sees them."""

    inputs: Sequence[int]  # widths of the inputs they keep: each adapter's dropped-out copy,
    # or without dropout each distinct input once (q, k and v read the same tensor)
    count: int  # adapters per block (each keeps its rank-r product)
    rank: int
    dropout: bool  # each kept input comes with its dropout mask
    dtype: str = "fp32"  # precision of the adapters' products (bf16 under autocast)
    trainable: int = 0  # trainable parameters in the whole model (gradients + AdamW state)

    def per_token(self) -> float:
        copies = 2 if self.dropout else 1
        return BYTES[self.dtype] * (copies * sum(self.inputs) + self.count * self.rank)


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    activations_gib: float
    total_gib: float
    slack_gib: float = 0.0  # the CPU allocator's share, included in the total

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def line(self) -> str:
        slack = f", allocator slack {self.slack_gib:.1f}" if self.slack_gib else ""
        return (
            f"estimated peak memory {self.total_gib:.1f} GiB (weights {self.weights_gib:.1f}, "
            f"activations {self.activations_gib:.1f}{slack})"
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


def block_bytes_per_token(
    config: Any,
    *,
    dtype: str,
    max_length: int,
    adapters: Adapters | None,
    attention: Attention = "memory-efficient",
    attention_dtype: str | None = None,
) -> float:
    """Bytes the backward pass keeps per token for one trained block of a HF decoder
    ``config`` (hidden_size, intermediate_size, heads); 0 without adapters (nothing in the
    blocks is trained, so autograd keeps nothing there)."""
    if adapters is None:
        return 0.0
    h = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", 4 * h))
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", heads) or heads) * (h // heads)
    act, att = BYTES[dtype], BYTES[attention_dtype or dtype]
    norms = NORMS_PER_BLOCK * (4 * h + 4)  # the fp32 input and 1 / rms
    mlp = GATED_MLP_KEPT * inter * act
    logsumexp = 4 * heads
    if attention == "memory-efficient":  # q, k, v (grouped heads), output
        attn = att * (2 * h + 2 * kv) + logsumexp
    elif attention == "masked":  # k and v repeated to every head, and the expanded mask
        attn = att * (4 * h + max_length) + logsumexp
    else:  # eager: the fp32 softmax, and its cast copy below fp32: [heads, max_length]
        attn = att * 4 * h + heads * max_length * (4 + (att if att < 4 else 0))
    return norms + mlp + attn + adapters.per_token()


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
    quantized_params: int | None = None,
    adapters: Adapters | None = None,
    attention: Attention = "memory-efficient",
    attention_dtype: str | None = None,
    device_type: str = "cpu",
) -> MemoryEstimate:
    """Estimate for a HF decoder ``config`` whose top ``trained_layers`` blocks (all: None)
    carry ``adapters``.

    ``batch_tokens`` is the padded tokens of the largest batch (rows × longest prompt);
    ``attention`` is how the kernel runs: ``memory-efficient`` (flash or SDPA without a mask),
    ``masked`` (SDPA with a padding mask) or ``eager`` (the softmax matrix is materialised).

    With ``quantize``, ``quantized_params`` of the ``n_params`` are stored in that format (the
    linear layers bitsandbytes converts) and the rest (embeddings, norms) in ``dtype``; None
    counts them all as quantized.
    """
    layers = int(config.num_hidden_layers)
    act = BYTES[dtype]
    trainable = adapters.trainable if adapters is not None else 0
    quantized = 0 if quantize is None else quantized_params
    quantized = n_params if quantized is None else quantized
    weights = (quantized * BYTES[quantize or dtype] + (n_params - quantized) * BYTES[dtype]
               + trainable * ADAM_BYTES)
    per_block = block_bytes_per_token(
        config, dtype=dtype, max_length=max_length, adapters=adapters, attention=attention,
        attention_dtype=attention_dtype,
    )
    trained = layers if trained_layers is None else min(trained_layers, layers)
    trained = 0 if adapters is None else trained
    created = batch_tokens * trained * per_block
    if checkpointing:  # each trained block keeps its input; one is recomputed at a time
        activations = batch_tokens * (trained * int(config.hidden_size) * act + per_block)
    else:
        activations = created
    slack = CPU_ALLOCATOR_SLACK[checkpointing] * created if device_type == "cpu" else 0.0
    total = weights + activations + slack + RUNTIME_OVERHEAD
    return MemoryEstimate(
        round(weights / GIB, 2), round(activations / GIB, 2), round(total / GIB, 2),
        round(slack / GIB, 2),
    )
