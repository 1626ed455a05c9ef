"""MIMIC-III v1.4 (and its bundled 100-patient demo): seven CSV tables, upper- or lower-case."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from leader.data.sources.base import Source, check_options
from leader.data.sources.csvfiles import find_table, scan_table
from leader.data.sources.frames import (
    RawTables,
    admissions_frame,
    bad_if,
    check_root,
    clean_str,
    events_frame,
    file_label,
    icd_key_expr,
    parse_datetime,
    parse_int,
    prescriptions_frame,
    with_bad,
)

NAME = "mimic3"
DEMO_WORD = "demo"
PROFILE_FIELDS = ("gender", "age", "insurance", "language", "religion", "marital_status",
                  "ethnicity")
# canonical table → (file stem, header names read, lower case)
TABLES = {
    "admissions": ("ADMISSIONS", ["subject_id", "hadm_id", "admittime", "insurance", "language",
                                  "religion", "marital_status", "ethnicity"]),
    "patients": ("PATIENTS", ["subject_id", "gender", "dob"]),
    "diagnoses": ("DIAGNOSES_ICD", ["hadm_id", "icd9_code"]),
    "procedures": ("PROCEDURES_ICD", ["hadm_id", "icd9_code"]),
    "prescriptions": ("PRESCRIPTIONS", ["hadm_id", "drug", "gsn", "ndc"]),
    "dx_titles": ("D_ICD_DIAGNOSES", ["icd9_code", "short_title", "long_title"]),
    "px_titles": ("D_ICD_PROCEDURES", ["icd9_code", "short_title", "long_title"]),
}


def demo_root() -> Path:
    """The bundled MIMIC-III Clinical Database Demo v1.4 tables (ODbL, see its SOURCES.md)."""
    return Path(__file__).parent.parent / "resources" / "mimic-iii-demo"


def resolve_root(root: str | Path) -> Path:
    """``demo`` (the literal word) means the bundled MIMIC-III demo; anything else is a path."""
    if str(root) == DEMO_WORD and not Path(root).exists():
        return demo_root()
    return Path(root)


def scan_all(directory: Path, root: Path, tables: dict) -> tuple[dict, dict, dict]:
    """Find and header-check every table; (scans, files by label, labels by table)."""
    paths = {name: find_table(directory, stem) for name, (stem, _) in tables.items()}
    labels = {name: file_label(path, root) for name, path in paths.items()}
    scans = {name: scan_table(paths[name], labels[name], cols)
             for name, (_, cols) in tables.items()}
    return scans, paths, labels


def read(root: Path, options: Mapping[str, str]) -> RawTables:
    check_options(NAME, options, {})
    root = check_root(resolve_root(root), NAME)
    scans, paths, labels = scan_all(root, root, TABLES)
    icd9 = icd_key_expr(clean_str("icd9_code"), pl.lit(9))
    subject, dob = parse_int("subject_id"), parse_datetime("dob")
    patients = with_bad(scans["patients"], [
        bad_if(subject, "subject_id", "an integer patient id", required=True),
        bad_if(dob, "dob", "a date-time like 2090-06-05"),
    ]).select("_row", "_bad", subject.alias("patient_id"), clean_str("gender").alias("gender"),
              dob.dt.year().cast(pl.Int64).alias("birth_year"), dob.dt.date().alias("birth_date"))
    ids = {"patient_id": (subject, "subject_id"), "hadm_id": (parse_int("hadm_id"), "hadm_id"),
           "admittime": (parse_datetime("admittime"), "admittime")}
    fields = {f: pl.col(f) for f in PROFILE_FIELDS[2:]}
    return RawTables(
        source=NAME, root=root, profile_fields=list(PROFILE_FIELDS),
        admissions=admissions_frame(scans["admissions"], ids, fields),
        patients=patients,
        diagnoses=events_frame(scans["diagnoses"], "hadm_id", icd9),
        procedures=events_frame(scans["procedures"], "hadm_id", icd9),
        prescriptions=prescriptions_frame(
            scans["prescriptions"], "hadm_id", {c: pl.col(c) for c in ("ndc", "gsn", "drug")}),
        dx_titles=_titles(scans["dx_titles"], icd9),
        px_titles=_titles(scans["px_titles"], icd9),
        files={labels[t]: p for t, p in paths.items()}, labels=labels, paths=paths,
    )



def _titles(lf: pl.LazyFrame, code: pl.Expr) -> pl.LazyFrame:
    """MIMIC-III has a short title (SHORT_TITLE, ~7 tokens) beside the long one (~12)."""
    return lf.select(code.alias("code"), clean_str("long_title").alias("title"),
                     clean_str("short_title").alias("short_title"))

SOURCE = Source(
    name=NAME,
    title="MIMIC-III v1.4 (or the bundled demo: --root demo)",
    tables=", ".join(stem for stem, _ in TABLES.values()),
    profile_fields=PROFILE_FIELDS,
    read=read,
    distill_weights=(0.4, 0.005),
    synth=True,
)
