"""Raw data of every registered source, and the edits that make it hostile, for the shared suite.

Each case knows where its admissions / diagnoses / prescriptions live and how to spoil them, so
tests/test_sources.py runs the same cohort and bad-input tests over every source.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

FIXTURES = Path(__file__).parent / "fixtures"
MEDS_ETL = FIXTURES / "meds_etl"  # scripts/make-meds-etl-fixture.sh made it


@dataclass
class Case:
    """``tables``: role → file (relative to the raw root); ``columns``: role → a required
    column of that file; ``drug_edit``: turns one mapped prescription row into an unmappable
    one and returns the mapping route it had."""

    source: str
    make: Callable[[Path], Path]  # writes the raw data under the given dir, returns its root
    tables: dict[str, str]
    columns: dict[str, str]
    drug_edit: Callable[[Path], str]
    config: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- CSV helpers


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()


def write_text(path: Path, text: str) -> None:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    write_text(path, "".join(fn(read_text(path).splitlines(keepends=True))))


def header(path: Path) -> list[str]:
    return read_text(path).split("\n", 1)[0].strip().split(",")


def set_csv_field(path: Path, row: int, column: str, value: str) -> None:
    """Data row ``row`` (1-based), ``column`` (case-insensitive) := ``value`` (simple CSVs)."""
    names = [h.strip('"').lower() for h in header(path)]
    index = names.index(column.lower())

    def edit(lines: list[str]) -> list[str]:
        fields = lines[row].rstrip("\n").split(",")
        fields[index] = value
        lines[row] = ",".join(fields) + "\n"
        return lines

    edit_lines(path, edit)


def csv_frame(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)


def write_csv_frame(path: Path, frame: pl.DataFrame) -> None:
    write_text(path, frame.write_csv())


def first_row(path: Path, predicate: pl.Expr) -> int:
    """1-based data row of the first row matching ``predicate``."""
    frame = csv_frame(path).with_row_index("_i", offset=1)
    return int(frame.filter(predicate)["_i"][0])


# ------------------------------------------------------------------------------ the sources


def _synth(fmt: str) -> Callable[[Path], Path]:
    def make(where: Path) -> Path:
        from leader.data.synth import synthesize

        synthesize(where / "raw", fmt, patients=150, seed=3)
        return where / "raw"

    return make


def _copy(src: Path) -> Callable[[Path], Path]:
    def make(where: Path) -> Path:
        shutil.copytree(src, where / "raw")
        return where / "raw"

    return make


def _mimic_drug_edit(rx_file: str) -> Callable[[Path], str]:
    """A row mapped by its NDC gets an NDC, GSN and name that no route knows."""

    def edit(root: Path) -> str:
        from leader.data import drugs

        path = root / rx_file
        frame = csv_frame(path)
        lower = {c.lower(): c for c in frame.columns}
        known = drugs.ndc_map()["ndc"].implode()
        row = first_row(path, drugs.ndc_expr(pl.col(lower["ndc"])).is_in(known))
        set_csv_field(path, row, "ndc", "99999999999")
        set_csv_field(path, row, "gsn", "")
        set_csv_field(path, row, "drug", "Nodrug")
        return "ndc"

    return edit


def _omop_drug_edit(root: Path) -> str:
    path = root / "drug_exposure.csv.gz"
    row = first_row(path, pl.col("drug_concept_id") != "0")
    set_csv_field(path, row, "drug_concept_id", "0")
    set_csv_field(path, row, "drug_source_value", "99999999999")
    return "vocabulary"


def meds_files(root: Path) -> list[Path]:
    return sorted((root / "data").rglob("*.parquet"))


def _meds_drug_edit(root: Path) -> str:
    path = meds_files(root)[0]
    table = pq.read_table(path)
    codes = table.column("code").to_pylist()
    from leader.data import drugs

    known = set(drugs.ndc_map()["ndc"].to_list())
    i = next(i for i, c in enumerate(codes)
             if c.startswith("NDC/") and c[4:].zfill(11) in known)
    codes[i] = "NDC/99999999999"
    table = table.set_column(table.schema.get_field_index("code"), "code",
                             pa.array(codes, pa.string()))
    pq.write_table(table, path)
    return "ndc"


CASES = {
    "mimic3": Case(
        "mimic3", _synth("mimic3"),
        tables={"admissions": "ADMISSIONS.csv.gz", "diagnoses": "DIAGNOSES_ICD.csv.gz",
                "prescriptions": "PRESCRIPTIONS.csv.gz"},
        columns={"admissions": "HADM_ID", "diagnoses": "HADM_ID", "prescriptions": "NDC"},
        drug_edit=_mimic_drug_edit("PRESCRIPTIONS.csv.gz"),
    ),
    "mimic4": Case(
        "mimic4", _synth("mimic4"),
        tables={"admissions": "hosp/admissions.csv.gz", "diagnoses": "hosp/diagnoses_icd.csv.gz",
                "prescriptions": "hosp/prescriptions.csv.gz"},
        columns={"admissions": "hadm_id", "diagnoses": "hadm_id", "prescriptions": "ndc"},
        drug_edit=_mimic_drug_edit("hosp/prescriptions.csv.gz"),
    ),
    "omop": Case(
        "omop", _synth("omop"),
        tables={"admissions": "visit_occurrence.csv.gz",
                "diagnoses": "condition_occurrence.csv.gz",
                "prescriptions": "drug_exposure.csv.gz"},
        columns={"admissions": "visit_occurrence_id", "diagnoses": "visit_occurrence_id",
                 "prescriptions": "drug_concept_id"},
        drug_edit=_omop_drug_edit,
        config={"top_procedures": 1000},
    ),
    "meds": Case(
        "meds", _copy(MEDS_ETL / "meds"),
        tables={}, columns={"data": "code"},
        drug_edit=_meds_drug_edit,
        config={"top_procedures": 1000},
    ),
}
CSV_SOURCES = [name for name, case in CASES.items() if case.tables]
