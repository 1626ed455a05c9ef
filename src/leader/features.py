"""Teacher features for distillation: pooled hidden states and drug logits, per sample id.

Layout of ``TEACHER_DIR/features/``::

    <split>-<shard:05d>.safetensors   tensors "hidden" [n, H] and "logits" [n, |drugs|] (fp32);
                                      metadata: teacher_hash, data_hash, split, ids (JSON list)
    index.json                        teacher_hash, data_hash, hidden_size, per split: shards, n

Each shard is written to a temporary name and renamed, so a killed export leaves only complete
shards (and a temporary file that the next export removes); rerunning skips every shard that
already exists with the same teacher, data and ids.
``load_features`` refuses files made by another teacher or from another dataset.

The teacher hash is the SHA-256 of the bundle manifest's ``files`` table (the hashes of its
weights, config and vocabulary), so retraining into the same directory changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from leader.artifacts import (
    MANIFEST,
    read_json,
    remove_dead_temps,
    save_tensors,
    write_json_atomic,
)
from leader.data.dataset import SPLITS, Dataset
from leader.data.samples import Sample
from leader.errors import LeaderError

FEATURES = "features"
INDEX = "index.json"
DEFAULT_SHARD_SIZE = 256


def teacher_hash(teacher_dir: str | Path) -> str:
    manifest = read_json(Path(teacher_dir) / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("model") != "teacher" or not isinstance(files, dict):
        raise LeaderError(f"{teacher_dir}: not a teacher directory (manifest model is not teacher)")
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _as_dataset(data: str | Path | Dataset) -> Dataset:
    return data if isinstance(data, Dataset) else Dataset.load(data)


def shard_path(directory: Path, split: str, shard: int) -> Path:
    return directory / f"{split}-{shard:05d}.safetensors"


def _shard_ok(path: Path, expected: dict[str, str]) -> bool:
    """A finished shard from this teacher, this data and these sample ids."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged file is simply redone
        return False
    return all(meta.get(k) == v for k, v in expected.items())


class Encoder(Protocol):
    """A loaded teacher, as far as export needs it."""

    schema: Any
    config: Any

    def encode(
        self, samples: Sequence[Sample], on_progress: Callable[[int], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def export_features(
    teacher: Encoder,
    teacher_dir: str | Path,
    data: Dataset,
    batch_size: int = 16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Write the features of every sample of every split into ``teacher_dir/features``.

    ``teacher`` is the model saved in ``teacher_dir``. ``encoded`` (split -> (hidden, logits) in
    the split's sample order) writes features it already computed (train-teacher's scoring pass)
    instead of encoding again. Returns the index (with counts).
    """
    teacher_dir = Path(teacher_dir)
    thash = teacher_hash(teacher_dir)
    if teacher.schema.drugs.codes != data.drugs.codes:
        raise LeaderError(
            f"{data.root}: its drug vocabulary differs from the teacher's; export features "
            "with the data the teacher was trained on"
        )
    if encoded is None:  # encode() sorts each shard into batches of this size
        teacher.config.predict_batch_size = batch_size
    out = teacher_dir / FEATURES
    out.mkdir(exist_ok=True)
    remove_dead_temps(out)  # what a killed export was writing
    per_split = {s: data.samples(s) for s in SPLITS}
    if on_total is not None:
        on_total(sum(len(v) for v in per_split.values()))
    index: dict = {
        "teacher_hash": thash,
        "data_hash": data.data_hash,
        "hidden_size": int(teacher.config.hidden_size or 0),
        "drugs": len(data.drugs),
        "splits": {},
    }
    done = skipped = 0
    for split, samples in per_split.items():
        shards = []
        for k, start in enumerate(range(0, len(samples), shard_size)):
            chunk = samples[start : start + shard_size]
            ids = [s.sample_id for s in chunk]
            meta = {"teacher_hash": thash, "data_hash": data.data_hash, "split": split,
                    "ids": json.dumps(ids)}
            path = shard_path(out, split, k)
            shards.append(path.name)
            if _shard_ok(path, meta):
                skipped += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
                continue
            if encoded is not None:
                hidden, logits = (t[start : start + shard_size] for t in encoded[split])
                if on_progress is not None:
                    on_progress(len(chunk))
            else:  # one call per shard: the teacher sorts the shard into similar-length batches
                hidden, logits = teacher.encode(chunk, on_progress)
            save_tensors({"hidden": hidden, "logits": logits}, path, metadata=meta)
            done += len(chunk)
        index["splits"][split] = {"shards": shards, "n": len(samples)}
    write_json_atomic(out / INDEX, index)
    return {**index, "computed": done, "reused": skipped, "dir": str(out)}


def load_features(
    teacher_dir: str | Path, data: str | Path | Dataset, split: str
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(sample ids, hidden [N, H], logits [N, |drugs|]) of ``split``, checked against both the
    teacher (its current files) and the dataset (its hash)."""
    teacher_dir = Path(teacher_dir)
    directory = teacher_dir / FEATURES
    if split not in SPLITS:
        raise LeaderError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if not (directory / INDEX).is_file():
        raise LeaderError(
            f"{directory}: no exported features; run `leader export-features --teacher "
            f"{teacher_dir} --data DATA_DIR` first"
        )
    index = read_json(directory / INDEX)
    thash = teacher_hash(teacher_dir)
    dhash = _as_dataset(data).data_hash
    if index.get("teacher_hash") != thash:
        raise LeaderError(
            f"{directory / INDEX}: features were exported by another teacher (hash "
            f"{str(index.get('teacher_hash'))[:12]}, this teacher is {thash[:12]}); export again"
        )
    if index.get("data_hash") != dhash:
        raise LeaderError(
            f"{directory / INDEX}: features were exported from another dataset (data hash "
            f"{str(index.get('data_hash'))[:12]}, expected {dhash[:12]}); export them from it"
        )
    entry = index.get("splits", {}).get(split)
    if entry is None:
        raise LeaderError(f"{directory / INDEX}: no features for split {split!r}")
    ids: list[str] = []
    hidden, logits = [], []
    for name in entry["shards"]:
        path = directory / name
        expected = {"teacher_hash": thash, "data_hash": dhash, "split": split}
        if not _shard_ok(path, expected):
            raise LeaderError(f"{path}: missing, damaged or from another teacher/dataset; "
                              "run export-features again")
        with safe_open(str(path), framework="pt") as f:
            ids.extend(json.loads(f.metadata()["ids"]))
        tensors = load_file(str(path))
        hidden.append(tensors["hidden"])
        logits.append(tensors["logits"])
    if len(ids) != entry["n"]:
        raise LeaderError(f"{directory}: split {split!r} has {len(ids)} features, expected "
                          f"{entry['n']}; run export-features again")
    if not hidden:
        return [], torch.zeros(0, index.get("hidden_size", 0)), torch.zeros(0, index["drugs"])
    return ids, torch.cat(hidden), torch.cat(logits)


class TeacherFeatures(Protocol):
    """The teacher's hidden states of training samples, as the student's fit reads them."""

    size: int

    def covers(self, samples: Sequence[Sample]) -> bool: ...

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor: ...


class FeatureTable:
    """Exported teacher hidden states, aligned to samples by sample id.

    ``standardize``: each dimension minus its mean over these rows, over its std. An LLM's
    hidden state is mostly a constant offset in a few dimensions (SmolLM2: ~97% of the mean
    square), which a raw MSE spends itself on; standardized, every dimension's variation counts.
    :meth:`load` reads the TRAINING split only, so the statistics never see validation or test.
    """

    def __init__(self, ids: Sequence[str], hidden: torch.Tensor, standardize: bool = False):
        if len(ids) != hidden.shape[0]:
            raise LeaderError(f"teacher features: {len(ids)} ids for {hidden.shape[0]} rows")
        self.index = {sid: i for i, sid in enumerate(ids)}
        self.hidden = hidden.float()
        self.size = int(hidden.shape[1])
        self.mean = self.std = None
        if standardize:
            self.mean = self.hidden.mean(0)
            self.std = self.hidden.std(0, unbiased=False).clamp_min(1e-6)
            self.hidden = (self.hidden - self.mean) / self.std

    @classmethod
    def load(cls, teacher_dir: Path, data: Dataset, standardize: bool = False) -> FeatureTable:
        """The training split's features (standardized: with the training split's statistics)."""
        ids, hidden, _logits = load_features(teacher_dir, data, "train")
        return cls(ids, hidden, standardize)

    def check_covers(self, samples: Sequence[Sample], where: str) -> None:
        missing = [s.sample_id for s in samples if s.sample_id not in self.index]
        if missing:
            raise LeaderError(
                f"{where}: no teacher features for {len(missing)} of {len(samples)} training "
                f"samples (e.g. {missing[0]!r}); run `leader export-features` for this data"
            )

    def covers(self, samples: Sequence[Sample]) -> bool:
        return all(s.sample_id in self.index for s in samples)

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        rows = [self.index[s.sample_id] for s in samples]
        return self.hidden[torch.tensor(rows, dtype=torch.long)]
