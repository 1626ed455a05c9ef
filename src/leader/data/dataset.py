"""DATA_DIR: the prepared cohort that every model trains on (writer and reader).

Layout (other tools read it, so the names are fixed):

- ``visits.parquet``: one row per visit. Columns ``patient_id`` (str), ``hadm_id`` (str),
  ``visit_index`` (int, 0 = the patient's first kept visit), ``admittime`` (datetime),
  ``diagnoses``, ``procedures``, ``drugs`` (lists of codes), the profile fields (str, missing
  values are ``"unknown"``; ``age`` is an int in years at the visit) and ``split``
  (``train`` / ``val`` / ``test``).
- ``vocab.json``: ``{"diagnoses": [{"code", "title", "count"}...], "procedures": [...],
  "drugs": [...], "profile": {field: [values...]}}``. List order is the index order. MIMIC-III
  diagnoses and procedures also carry ``short_title`` (optional; for short-title prompts). MIMIC-III
  diagnoses and procedures also carry ``short_title`` (optional; for short-title prompts).
- ``ddi.json``: ``{"source": str, "pairs": [[atc3_a, atc3_b], ...]}`` over the drug vocabulary.
- ``manifest.json``: kind ``leader-data``; config, input hashes, mapping counts, drops, ``stats``.

ICD codes carry their version (``icd9:4019``, ``icd10:I10``), since the same string means
different things in ICD-9 and ICD-10. Drugs are ATC level-3 codes (``N02B``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from leader.artifacts import read_json, read_manifest, sha256_file, write_json, write_manifest
from leader.data.samples import Sample, build_samples
from leader.data.vocab import CODE_KINDS, UNKNOWN, Vocab, age_bucket, icd_key  # noqa: F401 (re-export)
from leader.errors import LeaderError

DATA_KIND = "leader-data"
DATA_FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """A prepared cohort loaded from DATA_DIR."""

    root: Path
    manifest: dict
    visits: pl.DataFrame
    vocab: dict[str, Vocab]
    profile_vocab: dict[str, list[str]]
    ddi_pairs: list[tuple[str, str]]
    ddi_source: str = ""

    @property
    def profile_fields(self) -> list[str]:
        return list(self.profile_vocab)

    @property
    def drugs(self) -> Vocab:
        return self.vocab["drugs"]

    @cached_property
    def ddi_matrix(self) -> np.ndarray:
        """Symmetric 0/1 adjacency over the drug vocabulary (built once, by the schema)."""
        return self.schema.ddi_matrix

    @cached_property
    def schema(self) -> Schema:
        return Schema.from_dataset(self)

    @cached_property
    def data_hash(self) -> str:
        """Identifies this cohort: the hash of its visits file as written."""
        return self.manifest.get("outputs", {}).get("visits.parquet", "")

    def samples(self, split: str | None = None, mode: str = "all") -> list[Sample]:
        frame = self.visits if split is None else self.visits.filter(pl.col("split") == split)
        return build_samples(frame, self.profile_fields, mode=mode)

    def n_samples(self, split: str) -> int:
        """``len(self.samples(split))`` without building them: one sample per visit."""
        return self.visits.filter(pl.col("split") == split).height

    @classmethod
    def load(cls, root: str | Path) -> Dataset:
        root = Path(root)
        manifest = read_manifest(root, DATA_KIND, DATA_FORMAT_VERSION)
        visits_path = root / "visits.parquet"
        if not visits_path.is_file():
            raise LeaderError(f"{visits_path}: file not found; is {root} a prepared DATA_DIR?")
        visits = pl.read_parquet(visits_path)
        required = {"patient_id", "visit_index", "split", *CODE_KINDS}
        missing = sorted(required - set(visits.columns))
        if missing:
            raise LeaderError(f"{visits_path}: missing columns {missing}")
        schema = Schema.load(root)
        return cls(
            root,
            manifest,
            visits,
            schema.vocab,
            schema.profile_vocab,
            schema.ddi_pairs,
            schema.ddi_source,
        )


def ddi_matrix(pairs: list[tuple[str, str]], drugs: Vocab) -> np.ndarray:
    n = len(drugs)
    adj = np.zeros((n, n), dtype=np.float32)
    for a, b in pairs:
        i, j = drugs.index.get(a), drugs.index.get(b)
        if i is not None and j is not None and i != j:
            adj[i, j] = adj[j, i] = 1.0
    return adj


def write_dataset(
    out: Path,
    visits: pl.DataFrame,
    vocab: dict[str, Vocab],
    profile_vocab: dict[str, list[str]],
    ddi_pairs: list[tuple[str, str]],
    ddi_source: str,
    **manifest_fields: Any,
) -> dict:
    """Write the DATA_DIR files into ``out`` (a directory from ``atomic_dir``)."""


    visits.write_parquet(out / "visits.parquet")
    Schema(vocab, profile_vocab, ddi_pairs, ddi_source).save(out)
    names = ("visits.parquet", "vocab.json", "ddi.json")
    outputs = {name: sha256_file(out / name) for name in names}
    return write_manifest(out, DATA_KIND, DATA_FORMAT_VERSION, outputs=outputs, **manifest_fields)


@dataclass
class Schema:
    """What a trained model must know about its data: vocabularies, profile values, DDI pairs.

    Saved into every model bundle (same ``vocab.json`` / ``ddi.json`` formats as DATA_DIR), so a
    bundle serves without the data directory.
    """

    vocab: dict[str, Vocab]
    profile_vocab: dict[str, list[str]]
    ddi_pairs: list[tuple[str, str]]
    ddi_source: str = ""
    source: str = ""
    data_hash: str = ""

    @property
    def drugs(self) -> Vocab:
        return self.vocab["drugs"]

    @property
    def profile_fields(self) -> list[str]:
        return list(self.profile_vocab)

    @cached_property
    def ddi_matrix(self) -> np.ndarray:
        return ddi_matrix(self.ddi_pairs, self.drugs)

    @classmethod
    def from_dataset(cls, data: Dataset) -> Schema:
        return cls(
            data.vocab,
            data.profile_vocab,
            data.ddi_pairs,
            data.ddi_source,
            str(data.manifest.get("source", "")),
            data.data_hash,
        )

    def save(self, directory: Path) -> None:
        write_json(
            directory / "vocab.json",
            {**{k: self.vocab[k].to_json() for k in CODE_KINDS}, "profile": self.profile_vocab},
        )
        write_json(
            directory / "ddi.json",
            {"source": self.ddi_source, "pairs": [list(p) for p in self.ddi_pairs]},
        )

    @classmethod
    def load(cls, directory: Path, source: str = "", data_hash: str = "") -> Schema:
        raw = read_json(directory / "vocab.json")
        try:
            vocab = {k: Vocab.from_json(raw[k]) for k in CODE_KINDS}
            profile_vocab = {k: list(v) for k, v in raw.get("profile", {}).items()}
        except (KeyError, TypeError) as e:
            raise LeaderError(f"{directory / 'vocab.json'}: malformed vocabulary ({e})") from None
        ddi = read_json(directory / "ddi.json")
        pairs = [(str(a), str(b)) for a, b in ddi.get("pairs", [])]
        return cls(vocab, profile_vocab, pairs, ddi.get("source", ""), source, data_hash)
