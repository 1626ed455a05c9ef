"""MIMIC-IV v2.x ``hosp/``: gzip CSV tables, ICD-9 and ICD-10 side by side (``icd_version``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from leader.data.sources.base import Source, check_options
from leader.data.sources.frames import (
    RawTables,
    admissions_frame,
    bad_if,
    check_root,
    clean_str,
    events_frame,
    icd_key_expr,
    parse_datetime,
    parse_int,
    prescriptions_frame,
    with_bad,
)
from leader.data.sources.mimic3 import scan_all

NAME = "mimic4"
PROFILE_FIELDS = ("gender", "age", "insurance", "language", "admission_type", "marital_status",
                  "race")
TABLES = {
    "admissions": ("admissions", ["subject_id", "hadm_id", "admittime", "admission_type",
                                  "insurance", "language", "marital_status", "race"]),
    "patients": ("patients", ["subject_id", "gender", "anchor_age", "anchor_year"]),
    "diagnoses": ("diagnoses_icd", ["hadm_id", "icd_code", "icd_version"]),
    "procedures": ("procedures_icd", ["hadm_id", "icd_code", "icd_version"]),
    "prescriptions": ("prescriptions", ["hadm_id", "drug", "gsn", "ndc"]),
    "dx_titles": ("d_icd_diagnoses", ["icd_code", "icd_version", "long_title"]),
    "px_titles": ("d_icd_procedures", ["icd_code", "icd_version", "long_title"]),
}


def table_dir(root: Path) -> Path:
    """MIMIC-IV accepts the folder holding ``hosp/`` or ``hosp/`` itself."""
    return root / "hosp" if (root / "hosp").is_dir() else root


def read(root: Path, options: Mapping[str, str]) -> RawTables:
    check_options(NAME, options, {})
    root = check_root(Path(root), NAME)
    scans, paths, labels = scan_all(table_dir(root), root, TABLES)
    version = parse_int("icd_version")
    version_ok = pl.when(version.is_in([9, 10])).then(version)
    icd = icd_key_expr(clean_str("icd_code"), version_ok)
    check_version = [bad_if(version_ok, "icd_version", "9 or 10", required=True)]
    subject, age, year = parse_int("subject_id"), parse_int("anchor_age"), parse_int("anchor_year")
    patients = with_bad(scans["patients"], [
        bad_if(subject, "subject_id", "an integer patient id", required=True),
        bad_if(age, "anchor_age", "an integer age"),
        bad_if(year, "anchor_year", "an integer year"),
    ]).select("_row", "_bad", subject.alias("patient_id"), clean_str("gender").alias("gender"),
              (year - age).alias("birth_year"), pl.lit(None, pl.Date).alias("birth_date"))
    ids = {"patient_id": (subject, "subject_id"), "hadm_id": (parse_int("hadm_id"), "hadm_id"),
           "admittime": (parse_datetime("admittime"), "admittime")}
    fields = {f: pl.col(f) for f in PROFILE_FIELDS[2:]}

    def titles(name: str) -> pl.LazyFrame:
        return scans[name].select(icd.alias("code"), clean_str("long_title").alias("title"))

    return RawTables(
        source=NAME, root=root, profile_fields=list(PROFILE_FIELDS),
        admissions=admissions_frame(scans["admissions"], ids, fields),
        patients=patients,
        diagnoses=events_frame(scans["diagnoses"], "hadm_id", icd, check_version),
        procedures=events_frame(scans["procedures"], "hadm_id", icd, check_version),
        prescriptions=prescriptions_frame(
            scans["prescriptions"], "hadm_id", {c: pl.col(c) for c in ("ndc", "gsn", "drug")}),
        dx_titles=titles("dx_titles"), px_titles=titles("px_titles"),
        files={labels[t]: p for t, p in paths.items()}, labels=labels, paths=paths,
    )


SOURCE = Source(
    name=NAME,
    title="MIMIC-IV v2.x hosp/ (--root: the folder holding hosp/, or hosp/ itself)",
    tables="hosp/" + ", ".join(stem for stem, _ in TABLES.values()),
    profile_fields=PROFILE_FIELDS,
    read=read,
    prepare_defaults={"top_procedures": 1000},
    distill_weights=(0.8, 0.01),
    synth=True,
)
