"""Causal attention on CPU, fp32 against bf16, by prompt length: what the teacher's attention costs.

Usage::

    .venv/bin/python benchmarks/attention.py [--lengths 256,512,768,1024,2048] [--tokens 2048]

Times one forward and backward pass of ``F.scaled_dot_product_attention`` (causal, grouped
key/value heads, as the mask-free teacher path calls it) on random inputs shaped like one
``smollm2`` layer (9 query heads, 3 key/value heads, 64 dimensions), at each length with
``--tokens // length`` rows, in fp32 and in bf16, one thread; best of ``--repeats``. Prints one
JSON line per length with both times, the fp32 / bf16 ratio and the fp32 time per token.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def attention_seconds(rows: int, length: int, heads: int, kv_heads: int, dim: int,
                      dtype: torch.dtype, repeats: int) -> float:
    """Best wall time of one causal attention forward + backward."""
    gen = torch.Generator().manual_seed(0)

    def make(h: int) -> torch.Tensor:
        x = torch.randn(rows, h, length, dim, generator=gen).to(dtype)
        return x.requires_grad_()

    q, k, v = make(heads), make(kv_heads), make(kv_heads)
    grad = torch.randn(rows, heads, length, dim, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.backward(grad)
        best = min(best, time.perf_counter() - start)
        q.grad = k.grad = v.grad = None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,384,512,576,640,704,768,896,1024,1536,2048")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for length in (int(x) for x in args.lengths.split(",")):
        rows = max(1, args.tokens // length)
        fp32, bf16 = (attention_seconds(rows, length, args.heads, args.kv_heads, args.dim, dt,
                                        args.repeats) for dt in (torch.float32, torch.bfloat16))
        print(json.dumps({
            "length": length, "rows": rows, "fp32_ms": round(fp32 * 1e3, 1),
            "bf16_ms": round(bf16 * 1e3, 1), "fp32_over_bf16": round(fp32 / bf16, 2),
            "fp32_us_per_token": round(fp32 * 1e6 / (rows * length), 1),
        }), flush=True)


if __name__ == "__main__":
    main()
