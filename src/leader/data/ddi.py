"""Drug–drug interaction (DDI) pairs over ATC3 classes, and the cohort's ground-truth DDI rate.

The default pairs are the bundled TWOSIDES-derived ATC3 table (``atc3_interactions.csv``); a user
file with two columns of ATC3 codes (header optional) replaces it. The DDI rate follows the
lineage (GAMENet/SafeDrug): over all visits, interacting pairs among each visit's drug set divided
by all pairs, pooled (not averaged per visit).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from leader.data.dataset import ddi_matrix as _ddi_matrix
from leader.data.vocab import Vocab
from leader.errors import LeaderError

DEFAULT_DDI = Path(__file__).parent / "resources" / "drugs" / "atc3_interactions.csv"
DEFAULT_SOURCE = "bundled TWOSIDES-derived ATC3 pairs (atc3_interactions.csv)"
ATC3 = re.compile(r"^[A-Z]\d\d[A-Z]$")


def load_pairs(path: str | Path | None = None) -> tuple[list[tuple[str, str]], str]:
    """Read a pairs CSV → sorted unique ``(a, b)`` with ``a < b``, and a source description."""
    path = Path(path) if path is not None else DEFAULT_DDI
    source = DEFAULT_SOURCE if path == DEFAULT_DDI else f"user file {path.name}"
    if not path.is_file():
        raise LeaderError(f"{path}: file not found (expected a CSV of ATC3 pairs)")
    try:
        table = pl.read_csv(path, has_header=False, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise LeaderError(f"{path}: empty file (expected two columns of ATC3 codes)") from None
    except pl.exceptions.PolarsError as e:
        raise LeaderError(f"{path}: cannot parse as CSV ({str(e).splitlines()[0]})") from None
    if table.width != 2:
        raise LeaderError(f"{path}: {table.width} columns, expected 2 (two ATC3 codes per row)")
    table.columns = ["a", "b"]
    table = table.with_columns(pl.all().str.strip_chars().str.to_uppercase()).with_row_index(
        "row", offset=1
    )
    is_code = pl.col("a").str.contains(ATC3.pattern) & pl.col("b").str.contains(ATC3.pattern)
    if not table.filter(pl.col("row") == 1).select(is_code.fill_null(False)).item():
        table = table.slice(1)  # a header row
    bad = table.filter(~is_code.fill_null(False))
    if bad.height:
        row, a, b = bad.row(0)
        value = a if a is None or not ATC3.match(a) else b
        raise LeaderError(
            f"{path} row {row}: expected an ATC level-3 code like N02B, got {value!r}"
        )
    if not table.height:
        raise LeaderError(f"{path}: no pairs (only a header); expected rows of two ATC3 codes")
    pairs = table.filter(pl.col("a") != pl.col("b")).select(
        pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b")
    )
    return sorted(set(pairs.iter_rows())), source


def restrict_pairs(pairs: list[tuple[str, str]], codes: list[str]) -> list[tuple[str, str]]:
    """Keep the pairs whose two classes are both in the drug vocabulary."""
    keep = set(codes)
    return [(a, b) for a, b in pairs if a in keep and b in keep]


def ddi_rate(drug_lists: pl.Series, pairs: list[tuple[str, str]], drugs: Vocab,
             chunk: int = 50_000) -> float:
    """Pooled share of interacting pairs among the drug pairs of each visit (0 if no pairs).

    Per visit with multi-hot ``x`` and adjacency ``A``: interacting pairs = xᵀAx / 2 and all
    pairs = n(n-1)/2; vectorised in chunks so MIMIC-IV size stays small in memory.
    """
    adj = _ddi_matrix(pairs, drugs)
    index = pl.DataFrame({"drug": drugs.codes, "i": np.arange(len(drugs))})
    interacting = total = 0.0
    for start in range(0, len(drug_lists), chunk):
        part = pl.DataFrame({"drug": drug_lists.slice(start, chunk)}).with_row_index("v")
        hits = part.explode("drug").join(index, on="drug").unique(["v", "i"])
        x = np.zeros((part.height, len(drugs)), dtype=np.float32)
        x[hits["v"].to_numpy(), hits["i"].to_numpy()] = 1.0
        n = x.sum(axis=1)
        interacting += float(((x @ adj) * x).sum() / 2)
        total += float((n * (n - 1) / 2).sum())
    return interacting / total if total else 0.0
