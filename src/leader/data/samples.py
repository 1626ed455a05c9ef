"""The one sample view every model reads, and the code-tensor collate the code models share.

A :class:`Sample` is a patient up to one target visit: ``visits`` oldest first, the last one being
the visit to recommend for (its ``drugs`` are the target; empty at inference time). Models cut the
history themselves (the teacher's prompt keeps the last 3 earlier visits, the student the last K
visits), so one sample serves every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from leader.data.vocab import UNKNOWN, Vocab, age_bucket


@dataclass(frozen=True)
class Visit:
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    drugs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    sample_id: str
    patient_id: str
    visits: tuple[Visit, ...]
    profile: dict = field(default_factory=dict, hash=False, compare=False)
    split: str = ""

    @property
    def current(self) -> Visit:
        return self.visits[-1]

    @property
    def history(self) -> tuple[Visit, ...]:
        return self.visits[:-1]

    @property
    def target(self) -> tuple[str, ...]:
        return self.current.drugs

    @property
    def is_first_visit(self) -> bool:
        return len(self.visits) == 1


def sample_id(patient_id: str, visit_index: int) -> str:
    return f"{patient_id}/{visit_index}"


def build_samples(
    visits: pl.DataFrame, profile_fields: Sequence[str], mode: str = "all"
) -> list[Sample]:
    """One sample per visit with all its earlier visits (``mode="all"``), or only each patient's
    last visit (``mode="last"``, the reference code's choice)."""
    if mode not in ("all", "last"):
        raise ValueError(f"mode must be 'all' or 'last', not {mode!r}")
    cols = [
        "patient_id",
        "visit_index",
        "diagnoses",
        "procedures",
        "drugs",
        "split",
        *profile_fields,
    ]
    frame = visits.select(cols).sort("patient_id", "visit_index")
    samples: list[Sample] = []
    history: list[Visit] = []
    last_patient = None
    rows = frame.iter_rows(named=True)
    for row in rows:
        pid = str(row["patient_id"])
        if pid != last_patient:
            history, last_patient = [], pid
        visit = Visit(tuple(row["diagnoses"]), tuple(row["procedures"]), tuple(row["drugs"]))
        history.append(visit)
        samples.append(
            Sample(
                sample_id=sample_id(pid, int(row["visit_index"])),
                patient_id=pid,
                visits=tuple(history),
                profile={f: row[f] for f in profile_fields},
                split=row["split"],
            )
        )
    if mode == "last":
        last: dict[str, Sample] = {}
        for s in samples:
            last[s.patient_id] = s
        samples = list(last.values())
    return samples


def multi_hot(codes_per_sample: Sequence[Sequence[str]], vocab: Vocab) -> torch.Tensor:
    index = vocab.index
    rows, cols = [], []
    for i, codes in enumerate(codes_per_sample):
        for c in codes:
            j = index.get(c)
            if j is not None:
                rows.append(i)
                cols.append(j)
    out = np.zeros((len(codes_per_sample), len(vocab)), dtype=np.float32)
    out[rows, cols] = 1.0  # one vectorised write: this runs for every batch
    return torch.from_numpy(out)


class TensorBatch:
    """Mixin for dataclasses of tensors with a ``target``: moves to a device as one."""

    target: torch.Tensor

    def to(self, device: torch.device | str):
        return type(self)(**{k: v.to(device) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return self.target.shape[0]


@dataclass
class CodeBatch(TensorBatch):
    """Padded code tensors for a batch of samples (id 0 is padding everywhere).

    ``diagnoses``/``procedures``: [B, V, L] ids of each visit's codes, the last K visits.
    ``prev_drugs``: [B, V, L] ids of the *previous* visit's drugs (the drug stream shifted by one
    visit); ``first_visit``: [B, V] true where that visit has no earlier visit in the record, so
    the profile stands in for the missing drug record. ``visit_mask``: [B, V] true for real visits
    (visits are right-aligned: the current visit is always at index V-1).
    ``profile``: [B, F] ids per profile field. ``target``: [B, |drugs|] multi-hot.
    """

    diagnoses: torch.Tensor
    procedures: torch.Tensor
    prev_drugs: torch.Tensor
    first_visit: torch.Tensor
    visit_mask: torch.Tensor
    profile: torch.Tensor
    target: torch.Tensor



class CodeEncoder:
    """Turns samples into :class:`CodeBatch` tensors with separate vocabularies per code type."""

    def __init__(
        self,
        vocab: dict[str, Vocab],
        profile_vocab: dict[str, list[str]],
        max_visits: int = 10,
        max_codes: int = 64,
    ):
        self.vocab = vocab
        self.profile_vocab = profile_vocab
        self.profile_index = {
            f: {v: i for i, v in enumerate(vals)} for f, vals in profile_vocab.items()
        }
        self.max_visits = max_visits
        self.max_codes = max_codes

    def sizes(self) -> dict[str, int]:
        """Embedding table sizes, padding included."""
        return {k: len(v) + 1 for k, v in self.vocab.items()}

    def profile_sizes(self) -> list[int]:
        return [len(v) + 1 for v in self.profile_vocab.values()]

    def _ids(self, codes: Sequence[str], kind: str) -> list[int]:
        index = self.vocab[kind].index
        ids = [index[c] + 1 for c in codes if c in index]
        return ids[: self.max_codes]

    def profile_ids(self, profile: dict) -> list[int]:
        out = []
        for f, index in self.profile_index.items():
            value = profile.get(f)
            value = age_bucket(value) if f == "age" else (UNKNOWN if value is None else str(value))
            out.append(index.get(value, index.get(UNKNOWN, -1)) + 1)
        return out

    def collate(self, samples: Sequence) -> CodeBatch:
        """Pad a batch; filled in numpy (one slice write per set), since it runs per request."""
        B, V = len(samples), self.max_visits
        rows = []
        L = 1
        for s in samples:
            visits = s.visits[-V:]
            offset = len(s.visits) - len(visits)
            dx = [self._ids(v.diagnoses, "diagnoses") for v in visits]
            px = [self._ids(v.procedures, "procedures") for v in visits]
            prev = [
                self._ids(s.visits[offset + t - 1].drugs, "drugs") if offset + t > 0 else []
                for t in range(len(visits))
            ]
            L = max(L, *(len(x) for x in dx + px + prev))
            rows.append((dx, px, prev, offset == 0))
        codes = np.zeros((3, B, V, L), dtype=np.int64)
        first_t = np.zeros((B, V), dtype=bool)
        mask_t = np.zeros((B, V), dtype=bool)
        for b, (dx, px, prev, starts_record) in enumerate(rows):
            start = V - len(dx)
            for t in range(len(dx)):
                for k, ids in enumerate((dx[t], px[t], prev[t])):
                    if ids:
                        codes[k, b, start + t, : len(ids)] = ids
            first_t[b, start] = starts_record  # only a kept first visit has no drug record
            mask_t[b, start:] = True
        profile = torch.tensor([self.profile_ids(s.profile) for s in samples], dtype=torch.long)
        if profile.ndim == 1:
            profile = profile.view(B, 0)
        target = multi_hot([s.target for s in samples], self.vocab["drugs"])
        tensors = torch.from_numpy(codes)
        return CodeBatch(
            tensors[0],
            tensors[1],
            tensors[2],
            torch.from_numpy(first_t),
            torch.from_numpy(mask_t),
            profile,
            target,
        )
