"""Cheaper ways to run the teacher's step (mostly on a bf16 backbone), same model and maths.

A profile of one all-layer training step of ``smollm2`` on a CPU with bf16 matrix units
(docs/teacher.md, Fast paths) found the backbone's own matrix multiplies at ~200 GFLOP/s, and
about 30% of the step in three avoidable places: LoRA's rank-8 products in fp32 on fp32 copies
of every input, 7 dropout masks per block drawn one float at a time, and a bf16 attention
backward that runs at half the speed of the fp32 one on CPU. Each helper removes one of those:

- :func:`autocast`: the LoRA products run in bf16 under ``torch.autocast`` (the usual mixed
  precision: LoRA's weights, gradients and optimiser state stay fp32);
- :class:`Dropout`: the same Bernoulli keep-mask, drawn from 64 random bits per 4 elements
  (the drop rate rounded to 1/65,536), in the autocast precision;
- :func:`use_fp32_attention`: on CPU, attention's inputs go to fp32 for the kernel and back;
- :func:`right_padded`: a batch padded on the right needs no padding mask, only causal attention
  (the teacher then passes none), which has faster kernels than a masked one.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

FP32_ATTENTION = "leader_sdpa_fp32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for ``dtype`` (bf16) on ``device``; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Dropout(nn.Module):
    """Inverted dropout with an independent keep-mask per element, like :class:`nn.Dropout`,
    but ~2× cheaper to draw on CPU: 16 random bits per element compared with a threshold.

    It also does peft's cast of a LoRA input: to the autocast precision under autocast, else to
    ``dtype`` (the adapter's weights), so that a bf16 input is not copied to fp32 and back."""

    def __init__(self, p: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dtype = dtype
        # an int16 draw is uniform on [-32768, 32767]: drop below this threshold
        self.threshold = -32768 + round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else self.dtype)
        x = x.to(dtype)
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        # the whole int64 range: random_() alone leaves the sign bit 0, so one int16 in 4
        # would never be dropped
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(
            -(2**63), 2**63 - 1)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        # cheaper than masked_fill in bf16; there the 1 / (1 - p) factor has bf16's precision,
        # as it has in nn.Dropout on a bf16 tensor
        return x * keep.to(dtype).mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, dtype={self.dtype}"


def use_fast_dropout(backbone: nn.Module) -> None:
    """Swap every LoRA layer's dropout for :class:`Dropout`, which also takes over peft's cast
    of the input."""
    for module in backbone.modules():
        drops, weights = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(drops, nn.ModuleDict) or not isinstance(weights, nn.ModuleDict):
            continue
        for name, drop in drops.items():
            p = drop.p if isinstance(drop, nn.Dropout) else 0.0
            drops[name] = Dropout(p, weights[name].weight.dtype)
        module.cast_input_dtype_enabled = False  # Dropout casts, once


def _fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(dtype), weights


def use_fp32_attention(decoder: nn.Module) -> None:
    """Run the decoder's attention kernel in fp32 (transformers' own SDPA path otherwise)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FP32_ATTENTION, _fp32_sdpa)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)  # the masks SDPA takes
    decoder.config._attn_implementation = FP32_ATTENTION


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of a [B, T] 0/1 mask is its real tokens followed by its padding."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def describe(
    backbone: nn.Module, autocast_dtype: torch.dtype | None, causal_only: bool = False
) -> list[str]:
    """The fast paths in use, in words (for the console and the manifest)."""
    used = []
    if any(isinstance(m, Dropout) for m in backbone.modules()):
        used.append("cheap LoRA dropout masks")
    if autocast_dtype is not None:
        used.append(f"LoRA products in {str(autocast_dtype).removeprefix('torch.')} (autocast)")
    config = getattr(backbone, "config", None)
    if getattr(config, "_attn_implementation", None) == FP32_ATTENTION:
        used.append("attention in fp32")
    if causal_only:
        used.append("no padding mask for right-padded batches")
    return used
