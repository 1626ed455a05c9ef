"""The frozen lower blocks' output per prompt, computed once and kept on disk (``--train-layers``).

WHY: with LoRA on the top K blocks only, everything below them is frozen, so its output for a
prompt never changes during training; computing it once instead of at every epoch and validation
removes most of the forward cost and all of the backward cost of the lower blocks.

Layout of a cache directory::

    cache.json                  {"key": ...}: the backbone, dtype and split this cache is for
    shard-<k:05d>.safetensors   one tensor per prompt, "<sample id>" -> [tokens, hidden]
                                (unpadded, in the backbone's dtype); metadata: key, and the
                                SHA-256 of the shard's sample ids and token ids

Shards are written to a temporary name and renamed, so a killed run keeps every finished shard
and a rerun continues (resumable). A cache made for another backbone, dtype, split or other
prompts is refused with a clear error rather than silently reused (hash-checked).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from leader.artifacts import remove_dead_temps, save_tensors, write_json_atomic
from leader.distributed import barrier, world
from leader.errors import LeaderError

CACHE_INFO = "cache.json"
SHARD_SIZE = 256


def backbone_key(spec: str, dtype: str, attention: str, split: int,
                 lower: torch.nn.Module) -> str:
    """Identity of the lower blocks: backbone spec, dtype, attention kernel (its precision can
    differ from the dtype's), split point and their weights."""
    h = hashlib.sha256(json.dumps([spec, dtype, attention, split]).encode())
    for name, tensor in sorted(lower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def prompts_hash(ids: Sequence[str], tokens: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps([list(ids), [list(t) for t in tokens]]).encode()).hexdigest()


class LayerCache:
    """Lower-block outputs by sample id; ``directory`` None keeps them in memory (tests)."""

    def __init__(self, directory: Path | None, key: str):
        self.directory = Path(directory) if directory is not None else None
        self.key = key
        self.memory: dict[str, torch.Tensor] = {}
        self.where: dict[str, Path] = {}  # sample id -> shard holding it
        self._open: dict[Path, object] = {}
        self._shards = 0  # shards seen over all fill() calls: spreads them over the ranks
        if self.directory is not None:
            self._check_directory()

    def _check_directory(self) -> None:
        info = self.directory / CACHE_INFO
        remove_dead_temps(self.directory)  # a killed run's half-written shards
        if info.is_file():
            if json.loads(info.read_text()).get("key") != self.key:
                raise LeaderError(
                    f"{self.directory}: a layer cache made for another backbone, dtype or "
                    "--train-layers; delete it (or rerun with --force) to build it again"
                )
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(info, {"key": self.key})  # other ranks may read it meanwhile

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.memory or sample_id in self.where

    def fill(
        self,
        name: str,
        ids: Sequence[str],
        tokens: Sequence[Sequence[int]],
        compute: Callable[[list[int]], list[torch.Tensor]],
        on_done: Callable[[int], None] | None = None,
    ) -> int:
        """Make sure every prompt of ``ids`` is cached; ``compute(rows)`` returns the lower
        output of those rows. Returns how many prompts this process computed (0 when all were
        reused). Under a launcher with several processes, each computes every world-th shard
        (counted over all calls, so that a split's last shard does not always fall to rank 0)
        and then reads the others' from disk. ``on_done(n)`` is told of prompts found already
        cached (``compute`` reports its own progress)."""
        done = on_done or (lambda _n: None)
        rank, size = world() if self.directory is not None else (0, 1)
        shards = []  # (rows, their sample ids, digest, path or None), in order
        for k, start in enumerate(range(0, len(ids), SHARD_SIZE)):
            rows = list(range(start, min(start + SHARD_SIZE, len(ids))))
            chunk_ids = [ids[i] for i in rows]
            digest = prompts_hash(chunk_ids, [tokens[i] for i in rows])
            path = self.directory and self.directory / f"{name}-{k:05d}.safetensors"
            mine = (self._shards + k) % size == rank
            shards.append((rows, chunk_ids, digest, path, mine))
        self._shards += len(shards)
        computed = 0
        for rows, chunk_ids, digest, path, mine in shards:
            if not mine:
                continue
            if path is not None and path.is_file():
                self._adopt(path, chunk_ids, digest)
                done(len(rows))
                continue
            hidden = compute(rows)
            computed += len(rows)
            if path is None:
                self.memory.update(zip(chunk_ids, hidden, strict=True))
                continue
            tensors = {sid: h.contiguous().cpu() for sid, h in zip(chunk_ids, hidden, strict=True)}
            save_tensors(tensors, path, metadata={"key": self.key, "prompts": digest})
            self.where.update(dict.fromkeys(chunk_ids, path))
        if size > 1:  # the other ranks' shards, once all are written
            barrier()
            for rows, chunk_ids, digest, path, mine in shards:
                if not mine:
                    self._adopt(path, chunk_ids, digest)
                    done(len(rows))
        return computed

    def _adopt(self, path: Path, chunk_ids: list[str], digest: str) -> None:
        """Serve ``chunk_ids`` from the finished shard at ``path`` (refused when stale)."""
        self._check_shard(path, digest)
        self.where.update(dict.fromkeys(chunk_ids, path))

    def _check_shard(self, path: Path, digest: str) -> None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != self.key or meta.get("prompts") != digest:
            raise LeaderError(
                f"{path}: stale layer cache (made for another backbone or other prompts); "
                "delete it (or rerun with --force) to build it again"
            )

    def get(self, sample_id: str) -> torch.Tensor:
        if sample_id in self.memory:
            return self.memory[sample_id]
        path = self.where[sample_id]
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = safe_open(str(path), framework="pt")
        return handle.get_tensor(sample_id)
