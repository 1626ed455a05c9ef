"""MIMIC-III v1.4 and MIMIC-IV v2.x ``hosp/`` readers → one canonical event schema.

Every table is read lazily with all columns as strings (NDC leading zeros and ICD codes survive),
header names case-insensitively (the full MIMIC-III has upper-case headers, the demo lower-case).
Each reader returns a polars LazyFrame in the canonical schema plus two bookkeeping columns:
``_row`` (1-based data row in the file) and ``_bad`` (why the row is malformed, or null), so the
caller can collect once and turn the first malformed row into a one-line error with
:func:`collect_checked`. Nothing here loops over rows in Python.

Canonical schema (internal ids are Int64; codes are strings):

- admissions: ``patient_id``, ``hadm_id``, ``admittime`` (datetime), the source's profile fields
- patients: ``patient_id``, ``gender``, and ``dob`` (MIMIC-III) or ``anchor_age``/``anchor_year``
- diagnoses / procedures: ``hadm_id``, ``code`` (``icd9:4019``, see ``dataset.icd_key``)
- prescriptions: ``hadm_id``, ``ndc``, ``gsn``, ``drug``
- titles: ``code``, ``title``
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from leader.errors import LeaderError

SOURCES = ("mimic3", "mimic4")
DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
MISSING_VALUES = ("", "?")  # MIMIC-IV writes "?" for an unknown language

# Profile fields per source, in the order models see them (matches the lineage's profile).
PROFILE_FIELDS = {
    "mimic3": ["gender", "age", "insurance", "language", "religion", "marital_status",
               "ethnicity"],
    "mimic4": ["gender", "age", "insurance", "language", "admission_type", "marital_status",
               "race"],
}

# table → (file stem, {canonical column: header name (lower case)})
TABLES = {
    "mimic3": {
        "admissions": ("ADMISSIONS", ["subject_id", "hadm_id", "admittime", "insurance", "language",
                                      "religion", "marital_status", "ethnicity"]),
        "patients": ("PATIENTS", ["subject_id", "gender", "dob"]),
        "diagnoses": ("DIAGNOSES_ICD", ["hadm_id", "icd9_code"]),
        "procedures": ("PROCEDURES_ICD", ["hadm_id", "icd9_code"]),
        "prescriptions": ("PRESCRIPTIONS", ["hadm_id", "drug", "gsn", "ndc"]),
        "dx_titles": ("D_ICD_DIAGNOSES", ["icd9_code", "short_title", "long_title"]),
        "px_titles": ("D_ICD_PROCEDURES", ["icd9_code", "short_title", "long_title"]),
    },
    "mimic4": {
        "admissions": ("admissions", ["subject_id", "hadm_id", "admittime", "admission_type",
                                      "insurance", "language", "marital_status", "race"]),
        "patients": ("patients", ["subject_id", "gender", "anchor_age", "anchor_year"]),
        "diagnoses": ("diagnoses_icd", ["hadm_id", "icd_code", "icd_version"]),
        "procedures": ("procedures_icd", ["hadm_id", "icd_code", "icd_version"]),
        "prescriptions": ("prescriptions", ["hadm_id", "drug", "gsn", "ndc"]),
        "dx_titles": ("d_icd_diagnoses", ["icd_code", "icd_version", "long_title"]),
        "px_titles": ("d_icd_procedures", ["icd_code", "icd_version", "long_title"]),
    },
}


@dataclass
class RawTables:
    """The raw source as lazy frames in the canonical schema, plus where each came from."""

    source: str
    root: Path
    files: dict[str, Path]
    admissions: pl.LazyFrame
    patients: pl.LazyFrame
    diagnoses: pl.LazyFrame
    procedures: pl.LazyFrame
    prescriptions: pl.LazyFrame
    dx_titles: pl.LazyFrame
    px_titles: pl.LazyFrame

    @property
    def profile_fields(self) -> list[str]:
        return PROFILE_FIELDS[self.source]

    def label(self, table: str) -> str:
        return file_label(self.files[table], self.root)


def file_label(path: Path, root: Path) -> str:
    """The file name to put in messages and the manifest: relative to the root the user gave."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# ---------------------------------------------------------------------------------------------
# Files and headers

DEMO_WORD = "demo"


def demo_root() -> Path:
    """The bundled MIMIC-III Clinical Database Demo v1.4 tables (ODbL, see its SOURCES.md)."""
    return Path(__file__).parent / "resources" / "mimic-iii-demo"


def resolve_root(root: str | Path) -> Path:
    """``demo`` (the literal word) means the bundled MIMIC-III demo; anything else is a path."""
    if str(root) == DEMO_WORD and not Path(root).exists():
        return demo_root()
    return Path(root)


def table_dir(source: str, root: Path) -> Path:
    """Where the tables are: MIMIC-IV accepts the folder holding ``hosp/`` or ``hosp/`` itself."""
    if source not in SOURCES:
        raise LeaderError(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    if not root.is_dir():
        raise LeaderError(f"{root}: directory not found (expected the raw {source} tables)")
    if source == "mimic4" and (root / "hosp").is_dir():
        return root / "hosp"
    return root


def find_table(directory: Path, stem: str) -> Path:
    """``stem.csv`` or ``stem.csv.gz``, file name matched case-insensitively."""
    by_name = {p.name.lower(): p for p in directory.iterdir() if p.is_file()}
    for suffix in (".csv.gz", ".csv"):
        hit = by_name.get(stem.lower() + suffix)
        if hit is not None:
            return hit
    raise LeaderError(
        f"{directory / stem}.csv: file not found (expected {stem}.csv or {stem}.csv.gz)"
    )


def read_header(path: Path) -> list[str]:
    """The header row, read with the csv module (cheap even for a multi-GB gzip file)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise LeaderError(f"{path}: cannot read the header ({e})") from None
    if not line.strip():
        raise LeaderError(f"{path}: empty file (expected a CSV header row)")
    return next(csv.reader(io.StringIO(line)))


def scan_table(path: Path, label: str, columns: list[str]) -> pl.LazyFrame:
    """Scan ``columns`` (lower-case names) as strings, with ``_row``; check the header first."""
    header = read_header(path)
    lower = {h.strip().lower(): h for h in header}
    missing = [c for c in columns if c not in lower]
    if missing:
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise LeaderError(
            f"{label}: missing column {', '.join(missing)} (expected a header with "
            f"{', '.join(columns)}; found: {shown})"
        )
    lf = pl.scan_csv(path, infer_schema=False, row_index_name="_row", row_index_offset=1)
    return lf.select("_row", *[pl.col(lower[c]).alias(c) for c in columns])


# ---------------------------------------------------------------------------------------------
# Parsing expressions (vectorised checks that name the column and the bad value)


def clean_str(name: str) -> pl.Expr:
    """Stripped string, with empty and MIMIC's missing markers as null."""
    s = pl.col(name).str.strip_chars()
    return pl.when(s.is_in(MISSING_VALUES)).then(None).otherwise(s)


def parse_int(name: str) -> pl.Expr:
    return clean_str(name).cast(pl.Int64, strict=False)


def parse_datetime(name: str) -> pl.Expr:
    s = clean_str(name)
    return pl.coalesce(
        [s.str.strptime(pl.Datetime("us"), f, strict=False, exact=True) for f in DATETIME_FORMATS]
    )


def bad_if(parsed: pl.Expr, name: str, expected: str, required: bool = False) -> pl.Expr:
    """A message where the raw value is present but did not parse (or is absent if required)."""
    raw = clean_str(name)
    failed = raw.is_not_null() & parsed.is_null()
    if required:
        failed = failed | raw.is_null()
    return pl.when(failed).then(
        pl.format(f"column {name}: expected {expected}, got '{{}}'", raw.fill_null(""))
    )


def with_bad(lf: pl.LazyFrame, checks: list[pl.Expr]) -> pl.LazyFrame:
    return lf.with_columns(pl.coalesce(checks).alias("_bad") if checks else pl.lit(None, pl.String))


def icd_key_expr(code: pl.Expr, version: pl.Expr) -> pl.Expr:
    """Vectorised ``dataset.icd_key``: ``icd{version}:{CODE without dots, upper case}``."""
    normalized = code.str.strip_chars().str.replace_all(".", "", literal=True).str.to_uppercase()
    return pl.concat_str([pl.lit("icd"), version.cast(pl.String), pl.lit(":"), normalized])


def collect_checked(lf: pl.LazyFrame, label: str) -> pl.DataFrame:
    """Collect (streaming), turn parse failures and malformed rows into a one-line LeaderError."""
    try:
        df = lf.collect(engine="streaming")
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeaderError(f"{label}: cannot parse as CSV ({first})") from None
    if "_bad" in df.columns:
        bad = df.filter(pl.col("_bad").is_not_null())
        if bad.height:
            first = bad.sort("_row").head(1)
            row, msg = first["_row"][0], first["_bad"][0]
            more = f" ({bad.height - 1} more malformed rows)" if bad.height > 1 else ""
            raise LeaderError(f"{label} row {row}: {msg}{more}")
        df = df.drop("_bad")
    return df


# ---------------------------------------------------------------------------------------------
# Readers


def read_tables(source: str, root: str | Path) -> RawTables:
    """Locate and lazily scan the seven tables of ``source`` under ``root``."""
    root = resolve_root(root)
    directory = table_dir(source, root)
    spec = TABLES[source]
    files = {name: find_table(directory, stem) for name, (stem, _) in spec.items()}

    def scan(name: str) -> pl.LazyFrame:
        return scan_table(files[name], file_label(files[name], root), spec[name][1])

    if source == "mimic3":
        tables = _mimic3(scan)
    else:
        tables = _mimic4(scan)
    return RawTables(source=source, root=root, files=files, **tables)


def _admissions(lf: pl.LazyFrame, fields: list[str]) -> pl.LazyFrame:
    """One row per admission: ids, admission time and the raw profile fields of this source."""
    subject, hadm = parse_int("subject_id"), parse_int("hadm_id")
    admit = parse_datetime("admittime")
    checks = [
        bad_if(subject, "subject_id", "an integer patient id", required=True),
        bad_if(hadm, "hadm_id", "an integer admission id", required=True),
        bad_if(admit, "admittime", "a date-time like 2150-01-31 13:45:00", required=True),
    ]
    ids = [subject.alias("patient_id"), hadm.alias("hadm_id"), admit.alias("admittime")]
    profile = [clean_str(f).alias(f) for f in fields]
    return with_bad(lf, checks).select("_row", "_bad", *ids, *profile)


def _patients(lf: pl.LazyFrame, parsed: dict[str, tuple[pl.Expr, str]]) -> pl.LazyFrame:
    """Gender plus the age anchors (``parsed``: column → (expression, what it should look like))."""
    subject = parse_int("subject_id")
    checks = [bad_if(subject, "subject_id", "an integer patient id", required=True)]
    checks += [bad_if(expr, name, expected) for name, (expr, expected) in parsed.items()]
    return with_bad(lf, checks).select(
        "_row", "_bad", subject.alias("patient_id"), clean_str("gender").alias("gender"),
        *[expr.alias(name) for name, (expr, _) in parsed.items()],
    )


def _events(lf: pl.LazyFrame, code: pl.Expr, checks: list[pl.Expr] | None = None) -> pl.LazyFrame:
    """Diagnosis/procedure rows → (hadm_id, code); an absent hadm_id or code is a counted drop
    later, a non-numeric one is malformed."""
    hadm = parse_int("hadm_id")
    checks = [bad_if(hadm, "hadm_id", "an integer admission id"), *(checks or [])]
    return with_bad(lf, checks).select("_row", "_bad", hadm.alias("hadm_id"), code.alias("code"))


def _titles(lf: pl.LazyFrame, code: pl.Expr, short: bool = False) -> pl.LazyFrame:
    """code, title and short_title (MIMIC-III only; null for MIMIC-IV, which has none)."""
    shorts = clean_str("short_title") if short else pl.lit(None, dtype=pl.String)
    return lf.select(
        code.alias("code"), clean_str("long_title").alias("title"), shorts.alias("short_title")
    )


def _prescriptions(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Same columns in both releases; MIMIC-IV ``gsn`` may list several space-separated codes."""
    hadm = parse_int("hadm_id")
    drug_cols = [clean_str(c).alias(c) for c in ("ndc", "gsn", "drug")]
    return with_bad(lf, [bad_if(hadm, "hadm_id", "an integer admission id")]).select(
        "_row", "_bad", hadm.alias("hadm_id"), *drug_cols
    )


def _mimic3(scan) -> dict[str, pl.LazyFrame]:
    fields = ["insurance", "language", "religion", "marital_status", "ethnicity"]
    icd9 = icd_key_expr(clean_str("icd9_code"), pl.lit(9))
    dob = parse_datetime("dob")
    return {
        "admissions": _admissions(scan("admissions"), fields),
        "patients": _patients(scan("patients"), {"dob": (dob, "a date-time like 2090-06-05")}),
        "diagnoses": _events(scan("diagnoses"), icd9),
        "procedures": _events(scan("procedures"), icd9),
        "prescriptions": _prescriptions(scan("prescriptions")),
        "dx_titles": _titles(scan("dx_titles"), icd9, short=True),
        "px_titles": _titles(scan("px_titles"), icd9, short=True),
    }


def _mimic4(scan) -> dict[str, pl.LazyFrame]:
    fields = ["insurance", "language", "admission_type", "marital_status", "race"]
    anchors = {
        "anchor_age": (parse_int("anchor_age"), "an integer age"),
        "anchor_year": (parse_int("anchor_year"), "an integer year"),
    }
    version = parse_int("icd_version")
    version_ok = pl.when(version.is_in([9, 10])).then(version)
    icd = icd_key_expr(clean_str("icd_code"), version_ok)
    check_version = [bad_if(version_ok, "icd_version", "9 or 10", required=True)]
    return {
        "admissions": _admissions(scan("admissions"), fields),
        "patients": _patients(scan("patients"), anchors),
        "diagnoses": _events(scan("diagnoses"), icd, check_version),
        "procedures": _events(scan("procedures"), icd, check_version),
        "prescriptions": _prescriptions(scan("prescriptions")),
        "dx_titles": _titles(scan("dx_titles"), icd),
        "px_titles": _titles(scan("px_titles"), icd),
    }


# ---------------------------------------------------------------------------------------------
# Profile


MAX_AGE = 90  # MIMIC shifts ages above 89 (MIMIC-III to ~300 years): pool them at 90


def visit_profile(source: str, admissions: pl.DataFrame, patients: pl.DataFrame) -> pl.DataFrame:
    """Admissions joined with gender and the age in whole years at the visit (null if unknown).

    MIMIC-III: from ``dob`` (shifted dates are consistent within a patient). MIMIC-IV:
    ``anchor_age`` at ``anchor_year`` plus the years since.
    """
    joined = admissions.join(patients, on="patient_id", how="left")
    admit = pl.col("admittime")
    if source == "mimic3":
        dob = pl.col("dob")
        before_birthday = (admit.dt.month() * 100 + admit.dt.day()) < (
            dob.dt.month() * 100 + dob.dt.day()
        )
        age = admit.dt.year() - dob.dt.year() - before_birthday.cast(pl.Int32)
        extra = ["dob"]
    else:
        age = pl.col("anchor_age") + admit.dt.year() - pl.col("anchor_year")
        extra = ["anchor_age", "anchor_year"]
    age = age.cast(pl.Int64)
    age = pl.when(age < 0).then(None).otherwise(pl.min_horizontal(age, pl.lit(MAX_AGE)))
    return joined.with_columns(age.alias("age")).drop(extra)
