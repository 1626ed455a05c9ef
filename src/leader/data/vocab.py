"""Code vocabularies and the small value conventions every data module shares.

Kept below :mod:`leader.data.dataset` and :mod:`leader.data.samples` so both can use them
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

CODE_KINDS = ("diagnoses", "procedures", "drugs")
UNKNOWN = "unknown"


def icd_key(code: str, version: int | str) -> str:
    """The canonical key of an ICD code: ``icd9:4019``."""
    return f"icd{int(version)}:{str(code).strip().replace('.', '').upper()}"


def age_bucket(age: Any) -> str:
    """Age as a profile category: decades, 90 and over pooled (MIMIC shifts ages above 89)."""
    if age is None:
        return UNKNOWN
    try:
        a = int(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if a < 0:
        return UNKNOWN
    if a >= 90:
        return "90+"
    lo = a // 10 * 10
    return f"{lo}-{lo + 9}"


@dataclass
class Vocab:
    """An ordered code vocabulary with titles; index i is the i-th code."""

    codes: list[str]
    titles: list[str]
    counts: list[int] = field(default_factory=list)
    short_titles: list[str] = field(default_factory=list)  # MIMIC-III SHORT_TITLE; [] = none

    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.codes)}

    def __len__(self) -> int:
        return len(self.codes)

    def title(self, code: str) -> str:
        i = self.index.get(code)
        return self.titles[i] if i is not None else code

    def short_title(self, code: str) -> str:
        """The short title where one is stored, else the (long) title."""
        i = self.index.get(code)
        if i is None or not self.short_titles:
            return self.title(code)
        return self.short_titles[i]

    def to_json(self) -> list[dict]:
        counts = self.counts or [0] * len(self.codes)
        items = [
            {"code": c, "title": t, "count": int(n)}
            for c, t, n in zip(self.codes, self.titles, counts, strict=True)
        ]
        for item, short in zip(items, self.short_titles, strict=False):
            item["short_title"] = short
        return items

    @classmethod
    def from_json(cls, items: list[dict]) -> Vocab:
        return cls(
            codes=[d["code"] for d in items],
            titles=[d.get("title") or d["code"] for d in items],
            counts=[int(d.get("count", 0)) for d in items],
            short_titles=(
                [d.get("short_title") or d.get("title") or d["code"] for d in items]
                if any("short_title" in d for d in items)
                else []
            ),
        )
