"""Finding, checking and scanning raw table files (CSV, gzip CSV, Parquet).

Why a module of its own: every source reads files the same hostile way. A header with a
duplicated name (``dob`` next to ``DOB``) would otherwise be read silently from the wrong column;
a truncated gzip or a stray quote would otherwise surface as a polars message without the file's
name. Everything here turns those into one-line :class:`LeaderError` s naming file and column/row.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from leader.errors import LeaderError

CSV_SUFFIXES = (".csv.gz", ".csv")
ALL_SUFFIXES = (".csv.gz", ".csv", ".parquet")
# One CSV record on one physical line: unquoted fields without quotes, or quoted ones with "".
_FIELD = r'(?:[^",\r\n]*|"(?:[^"\r\n]|"")*")'
_RECORD = re.compile(rf"{_FIELD}(?:,{_FIELD})*\r?\n?")


def find_table(directory: Path, stem: str, suffixes: tuple[str, ...] = CSV_SUFFIXES) -> Path:
    """``stem`` plus the first of ``suffixes`` that exists, file name matched case-insensitively."""
    by_name = {p.name.lower(): p for p in directory.iterdir() if p.is_file()}
    for suffix in suffixes:
        hit = by_name.get(stem.lower() + suffix)
        if hit is not None:
            return hit
    expected = " or ".join(stem + s for s in suffixes)
    raise LeaderError(f"{directory / stem}{suffixes[-1]}: file not found (expected {expected})")


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(".parquet")


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", newline="")


def check_unique(names: list[str], label: str) -> None:
    """Refuse a header naming a column twice (case-insensitively): which one to read is a guess."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().lower()
        if key in seen:
            raise LeaderError(
                f"{label}: duplicated column {name.strip()!r} in the header (also "
                f"{seen[key]!r}); expected each column name once"
            )
        seen[key] = name.strip()


def read_header(path: Path, label: str | None = None) -> list[str]:
    """The header row (CSV module; cheap even for a multi-GB gzip file) or Parquet schema names."""
    label = label or str(path)
    if is_parquet(path):
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as e:
            raise LeaderError(f"{label}: not a readable Parquet file ({_first_line(e)})") from None
    else:
        try:
            with _open_text(path) as f:
                line = f.readline()
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise LeaderError(f"{label}: cannot read the header ({_first_line(e)})") from None
        if not line.strip():
            raise LeaderError(f"{label}: empty file (expected a CSV header row)")
        names = next(csv.reader(io.StringIO(line)))
    check_unique(names, label)
    return names


def scan_table(path: Path, label: str, columns: list[str],
               optional: tuple[str, ...] = ()) -> pl.LazyFrame:
    """Scan ``columns`` (lower-case names) as strings, with ``_row``; check the header first.

    ``optional`` columns become null when the header lacks them.
    """
    header = read_header(path, label)
    lower = {h.strip().lower(): h for h in header}
    missing = [c for c in columns if c not in lower]
    if missing:
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise LeaderError(
            f"{label}: missing column {', '.join(missing)} (expected a header with "
            f"{', '.join(columns)}; found: {shown})"
        )
    if is_parquet(path):
        lf = pl.scan_parquet(path, row_index_name="_row", row_index_offset=1)
        cast = [pl.col(lower[c]).cast(pl.String).alias(c) for c in columns]
    else:
        lf = pl.scan_csv(path, infer_schema=False, row_index_name="_row", row_index_offset=1)
        cast = [pl.col(lower[c]).alias(c) for c in columns]
    extra = [pl.col(lower[c]).cast(pl.String).alias(c) if c in lower
             else pl.lit(None, pl.String).alias(c) for c in optional]
    return lf.select("_row", *cast, *extra)


# ---------------------------------------------------------------------------------------------
# Read errors


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def read_error(e: BaseException, label: str, path: Path | None) -> LeaderError:
    """A polars/IO failure while reading ``label`` → one line naming the file (and the row)."""
    if path is not None and path.name.lower().endswith(".gz") and isinstance(e, OSError):
        return LeaderError(
            f"{label}: corrupt or truncated gzip file ({_first_line(e)}); expected a complete "
            ".csv.gz"
        )
    if path is not None and is_parquet(path):
        return LeaderError(f"{label}: not a readable Parquet file ({_first_line(e)})")
    if path is None or not path.name.lower().endswith(CSV_SUFFIXES):
        return LeaderError(f"{label}: cannot read ({_first_line(e)})")
    try:
        where = locate_malformed(path)
    except (OSError, EOFError, UnicodeDecodeError) as inner:
        return LeaderError(f"{label}: cannot read ({_first_line(inner)})")
    if where is None:
        return LeaderError(f"{label}: cannot parse as CSV ({_first_line(e)})")
    row, why = where
    return LeaderError(f"{label} row {row}: cannot parse as CSV ({why})")


def _record_error(line: str, more: Iterator[str]) -> str | None:
    """Walk one record (pulling lines from ``more`` while a quoted field is open): why it is
    not well-formed CSV, or None."""
    state = "start"
    while True:
        for ch in line:
            if state == "quoted":
                state = "closing" if ch == '"' else "quoted"
            elif state == "closing":
                if ch == '"':
                    state = "quoted"
                elif ch in ",\r\n":
                    state = "start"
                else:
                    return "text after a closing quote"
            elif ch == '"':
                if state == "unquoted":
                    return "a quote inside an unquoted field"
                state = "quoted"
            else:
                state = "start" if ch in ",\r\n" else "unquoted"
        if state != "quoted":
            return None
        line = next(more, None)
        if line is None:
            return "a quoted field is never closed"


def locate_malformed(path: Path) -> tuple[int, str] | None:
    """The first data row that is not a well-formed CSV record (bad quoting), or None.

    Only called after polars failed; well-formed lines pass one compiled regex, so the Python
    walk runs only on the suspicious ones.
    """
    with _open_text(path) as f:
        f.readline()  # header
        lines = iter(f)
        row = 0
        for line in lines:
            row += 1
            if _RECORD.fullmatch(line):
                continue
            why = _record_error(line, lines)
            if why:
                return row, why
    return None
