"""`leader synth --generator additive` keeps the original planted model's output bit for bit.

The digests below were taken from the generator before the `clinical` one existed (commit
3b0177a), so old benchmark results stay reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import polars as pl
import pytest

from leader.data.synth import GROUND_TRUTH, synthesize

PINNED = {
    "mimic3": "9e5943bbd61237a0b06edd24bd4211555b223352a7e016ca3c13eb45e7fee2c6",
    "mimic4": "dfaf2263c4cb82e4bade74fbab61891ec75342f3a83f3f4bdcd4af17b96d857a",
}


def _digest(raw: Path) -> str:
    """SHA-256 over every decompressed table (path, then bytes) and the ground truth's rows."""
    h = hashlib.sha256()
    for p in sorted(raw.rglob("*.csv.gz")):
        h.update(p.relative_to(raw).as_posix().encode())
        h.update(gzip.decompress(p.read_bytes()))
    truth = pl.read_parquet(raw / GROUND_TRUTH).with_columns(
        pl.col("drugs").list.join(" "),
        pl.col("prob").cast(pl.List(pl.String)).list.join(" "),
    )
    h.update(truth.write_csv().encode())
    return h.hexdigest()


@pytest.mark.parametrize("fmt", sorted(PINNED))
def test_additive_reproduces_the_original_output(tmp_path, fmt):
    synthesize(tmp_path / "raw", fmt, 120, seed=5, generator="additive")
    assert _digest(tmp_path / "raw") == PINNED[fmt]
