"""MEDS (Medical Event Data Standard): ``data/**/*.parquet`` event rows plus ``metadata/``.

Why it reads like this: a MEDS dataset is one long table of (``subject_id``, ``time``, ``code``)
events, checked here against the schema of the pinned ``meds`` package. Which codes are
diagnoses, drugs or admissions is the converter's choice, so a vocabulary
(:mod:`leader.data.sources.meds_vocabulary`) classifies them. Visits come from the visit-id
column (meds_etl's ``visit_id``, MEDS-Transforms' ``hadm_id``) where the data has one, else each
admission event opens a visit that later events of the subject join. ``metadata/codes.parquet``
gives titles and parent codes (an RxNorm code whose parent is an ATC code maps through it);
``metadata/subject_splits.parquet`` gives the dataset's own split (``--split from-data``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import meds
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from leader.data.drugs import atc3_expr
from leader.data.sources import meds_vocabulary
from leader.data.sources.base import Source, check_options
from leader.data.sources.csvfiles import read_header
from leader.data.sources.frames import (
    RawTables,
    check_root,
    clean_str,
    file_label,
    icd_key_expr,
)
from leader.errors import LeaderError

NAME = "meds"
OPTIONS = {
    "vocabulary": "code vocabulary: a preset (meds_etl, the default, or meds_transforms) or a "
                  "JSON file (docs/data.md)",
    "visit_id": "the column holding visit ids (default: the vocabulary's visit_id_columns, "
                "first present; none: visits from admission events)",
}
SPLITS = {meds.train_split: "train", meds.tuning_split: "val", meds.held_out_split: "test"}
NO_VISIT_COLUMN = "none"


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual) and actual.tz is None
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual)
    return actual == expected


def check_schema(path: Path, label: str, schema) -> list[str]:
    """Column names of a Parquet file, refused when a required column of ``schema`` (a ``meds``
    schema class) is missing or has another type."""
    names = read_header(path, label)
    arrow = pq.read_schema(path)
    for name in schema.required_columns() + schema.optional_columns():
        expected = schema.column_type(name) if hasattr(schema, "column_type") else None
        if name not in names:
            if name in schema.required_columns():
                required = ", ".join(schema.required_columns())
                raise LeaderError(f"{label}: missing column {name} (the MEDS schema, meds "
                                  f"{meds.__version__}, requires {required})")
            continue
        actual = arrow.field(name).type
        if expected is not None and not _type_ok(actual, expected):
            raise LeaderError(f"{label}: column {name}: expected {expected} (MEDS schema), "
                              f"got {actual}")
    return names


def _dataset_metadata(root: Path) -> None:
    """``metadata/dataset.json``, where present, must satisfy the MEDS dataset schema."""
    path = root / meds.dataset_metadata_filepath
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
        meds.DatasetMetadataSchema.validate(meta)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeaderError(f"{meds.dataset_metadata_filepath}: not readable JSON ({e})") from None
    except Exception as e:  # flexible_schema's validation error wraps jsonschema's
        cause = e.__cause__ or e
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(e).__name__
        raise LeaderError(f"{meds.dataset_metadata_filepath}: does not match the MEDS dataset "
                          f"metadata schema ({first})") from None


def _data(root: Path, visit_option: str | None,
          vocab: meds_vocabulary.Vocabulary
          ) -> tuple[pl.LazyFrame, dict[str, Path], str | None, set[str]]:
    """All data shards as one frame: subject_id, time, code, visit_id (Int64; ``_visit_raw``
    keeps the text of a non-integer column for error messages), the order column where present,
    ``_row``; plus the files, the visit column used and the columns present."""
    data_dir = root / meds.data_subdirectory
    files = sorted(data_dir.rglob("*.parquet")) if data_dir.is_dir() else []
    if not files:
        raise LeaderError(f"{data_dir}: no Parquet files found (expected MEDS "
                          f"{meds.data_subdirectory}/**/*.parquet)")
    labels = {file_label(f, root): f for f in files}
    columns = {label: check_schema(f, label, meds.DataSchema) for label, f in labels.items()}
    present = set().union(*columns.values())
    if visit_option == NO_VISIT_COLUMN:
        visit = None
    elif visit_option:
        if visit_option not in present:
            raise LeaderError(f"{meds.data_subdirectory}/: no column {visit_option} "
                              "(source option visit_id)")
        visit = visit_option
    else:
        visit = next((c for c in vocab.visit_id_columns if c in present), None)
    scans = []
    for label, f in labels.items():
        cols = [pl.col("subject_id"), pl.col("time").cast(pl.Datetime("us")), pl.col("code")]
        if visit in columns[label]:
            integer = pa.types.is_integer(pq.read_schema(f).field(visit).type)
            raw = pl.lit(None, pl.String) if integer else clean_str(pl.col(visit).cast(pl.String))
            cols += [pl.col(visit).cast(pl.Int64, strict=False).alias("visit_id"),
                     raw.alias("_visit_raw")]
        else:
            cols += [pl.lit(None, pl.Int64).alias("visit_id"),
                     pl.lit(None, pl.String).alias("_visit_raw")]
        if vocab.order_column in present:
            order = vocab.order_column
            cols.append(pl.col(order).cast(pl.String) if order in columns[label]
                        else pl.lit(None, pl.String).alias(order))
        scans.append(pl.scan_parquet(f).select(cols))
    data = pl.concat(scans, how="vertical").with_row_index("_row", offset=1)
    data = data.with_columns(pl.col("_row").cast(pl.Int64))
    return data, labels, visit, present


def _with_visits_from_admissions(events: pl.LazyFrame) -> pl.LazyFrame:
    """No visit-id column: each admission event opens a visit (id: its row number) that the
    subject's events join from the admission's calendar day on (converters often time a
    procedure at midnight of its date), up to the next admission."""
    starts = events.filter(pl.col("_kind") == "admission").select(
        "subject_id", pl.col("time").dt.truncate("1d"),
        pl.col("_row").alias("_visit"),
    ).drop_nulls("time").sort("time")
    timed = events.filter(pl.col("time").is_not_null()).sort("time")
    joined = timed.join_asof(starts, on="time", by="subject_id", strategy="backward",
                             check_sortedness=False)  # both sorted by time just above
    static = events.filter(pl.col("time").is_null()).with_columns(
        pl.lit(None, pl.Int64).alias("_visit"))
    return pl.concat([joined, static], how="vertical").sort("_row").with_columns(
        pl.col("_visit").alias("visit_id")).drop("_visit")


def _drug_parents(root: Path, vocab: meds_vocabulary.Vocabulary) -> pl.LazyFrame | None:
    """code → ATC3 from ``metadata/codes.parquet`` parent codes that the vocabulary reads as
    ATC (e.g. an RxNorm code with parent ``ATC/N02BE01``)."""
    path = root / meds.code_metadata_filepath
    if not path.is_file():
        return None
    names = check_schema(path, meds.code_metadata_filepath, meds.CodeMetadataSchema)
    if "parent_codes" not in names:
        return None
    parents = pl.scan_parquet(path).select("code", pl.col("parent_codes").alias("_parent"))
    parents = parents.explode("_parent").drop_nulls("_parent")
    parents = parents.with_columns(vocab.classify(pl.col("_parent")))
    return parents.filter((pl.col("_kind") == "drug") & (pl.col("_route") == "atc")).select(
        "code", atc3_expr(pl.col("_value")).alias("_parent_atc3")
    ).drop_nulls("_parent_atc3").group_by("code").agg(pl.col("_parent_atc3").min())


def _titles(root: Path, vocab: meds_vocabulary.Vocabulary, kind: str) -> pl.LazyFrame:
    path = root / meds.code_metadata_filepath
    empty = pl.LazyFrame(schema={"code": pl.String, "title": pl.String})
    if not path.is_file():
        return empty
    names = check_schema(path, meds.code_metadata_filepath, meds.CodeMetadataSchema)
    if "description" not in names:
        return empty
    codes = pl.scan_parquet(path).select("code", "description").with_columns(
        vocab.classify(pl.col("code")))
    return codes.filter(pl.col("_kind") == kind).select(
        icd_key_expr(pl.col("_value"), pl.col("_version")).alias("code"),
        pl.col("description").alias("title"))


def _splits(root: Path) -> pl.LazyFrame | None:
    path = root / meds.subject_splits_filepath
    if not path.is_file():
        return None
    check_schema(path, meds.subject_splits_filepath, meds.SubjectSplitSchema)
    return pl.scan_parquet(path).select(
        pl.col("subject_id").alias("patient_id"),
        pl.col("split").replace_strict(SPLITS, default=None, return_dtype=pl.String),
    ).drop_nulls("split")


def read(root: Path, options: Mapping[str, str]) -> RawTables:
    check_options(NAME, options, OPTIONS)
    vocab = meds_vocabulary.load(options.get("vocabulary", "meds_etl"))
    root = check_root(Path(root), NAME)
    _dataset_metadata(root)
    data, files, visit_column, present = _data(root, options.get("visit_id"), vocab)
    visit_fields, subject_fields = vocab.fields("visit"), vocab.fields("subject")
    kind, field = pl.col("_kind"), pl.col("_field")

    def events_of(*kinds: str) -> pl.LazyFrame:
        """Rows whose code is of ``kinds``: a cheap prefix pre-filter, then the classification
        (so each frame's collect classifies only its own share of the data)."""
        wanted = (*kinds, "admission") if visit_column is None else kinds
        lf = data.filter(vocab.matches_kind(pl.col("code"), wanted)).with_columns(
            vocab.classify(pl.col("code"))).filter(kind.is_in(wanted))
        if visit_column is None:
            lf = _with_visits_from_admissions(lf)
        return lf.filter(kind.is_in(kinds))

    bad_visit = pl.when(pl.col("_visit_raw").is_not_null() & pl.col("visit_id").is_null()).then(
        pl.format("column visit_id: expected an integer visit id, got '{}'", pl.col("_visit_raw")))

    def value_of(name: str) -> pl.Expr:
        return clean_str(pl.col("_value").filter(field == name).first()).alias(name)

    visit_level = events_of("admission", "profile").filter(
        (pl.col("_level") == "visit") | (kind == "admission"))
    admissions = visit_level.with_columns(bad_visit.alias("_bad")).filter(
        pl.col("visit_id").is_not_null() | pl.col("_bad").is_not_null()
    ).group_by("visit_id", "_visit_raw").agg(
        pl.col("_row").min(), pl.col("_bad").first(),
        pl.col("subject_id").first().alias("patient_id"),
        pl.col("time").filter(kind == "admission").min().alias("admittime"),
        (kind == "admission").any().alias("_admitted"),
        *[value_of(f) for f in visit_fields],
    ).filter("_admitted")
    by_subject = events_of("admission", "profile", "birth").group_by("subject_id").agg(
        pl.col("_row").min(),
        value_of("gender") if "gender" in subject_fields else pl.lit(None, pl.String)
        .alias("gender"),
        pl.col("time").filter(kind == "birth").min().alias("_birth"),
        *[value_of(f) for f in subject_fields if f != "gender"],
    )
    extra = [f for f in subject_fields if f != "gender"]
    if extra:
        admissions = admissions.join(
            by_subject.select(pl.col("subject_id").alias("patient_id"), *extra),
            on="patient_id", how="left")
    fields = [f for f in vocab.profile_fields if f not in ("gender", "age")]
    admissions = admissions.select(
        "_row",
        pl.coalesce("_bad", pl.when(pl.col("admittime").is_null()).then(
            pl.lit("admission event without a time"))).alias("_bad"),
        "patient_id", pl.col("visit_id").alias("hadm_id"), "admittime",
        *[(pl.col(f) if f in visit_fields + extra else pl.lit(None, pl.String)).alias(f)
          for f in fields],
    )
    patients = by_subject.select(
        "_row", pl.lit(None, pl.String).alias("_bad"), pl.col("subject_id").alias("patient_id"),
        "gender", pl.col("_birth").dt.year().cast(pl.Int64).alias("birth_year"),
        pl.col("_birth").dt.date().alias("birth_date"))

    def coded(name: str) -> pl.LazyFrame:
        """Codes of a visit keep the order of ``order_column`` (meds_etl's ``seq_num``: the
        coding priority), then time, then the data's order."""
        lf = events_of(name)
        if vocab.order_column in present:
            order = pl.col(vocab.order_column).cast(pl.Int64, strict=False)
            lf = lf.sort([pl.col("visit_id"), order, pl.col("time"), pl.col("_row")],
                         nulls_last=True).with_columns(
                pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_row"))
        return lf.select("_row", bad_visit.alias("_bad"), pl.col("visit_id").alias("hadm_id"),
                         icd_key_expr(pl.col("_value"), pl.col("_version")).alias("code"))

    drugs = events_of("drug")
    route = pl.col("_route")
    parent = _drug_parents(root, vocab)
    if parent is not None:
        drugs = drugs.join(parent, on="code", how="left", maintain_order="left")
    else:
        drugs = drugs.with_columns(pl.lit(None, pl.String).alias("_parent_atc3"))
    prescriptions = drugs.select(
        "_row", bad_visit.alias("_bad"), pl.col("visit_id").alias("hadm_id"),
        pl.when(route == "ndc").then(pl.col("_value")).alias("ndc"),
        pl.lit(None, pl.String).alias("gsn"),
        clean_str(pl.when(route == "name").then(pl.col("_value"))).alias("drug"),
        pl.when(route == "atc").then(atc3_expr(pl.col("_value")))
        .otherwise(pl.col("_parent_atc3")).alias("atc3"),
    )
    label = f"{meds.data_subdirectory}/"
    for meta in (meds.code_metadata_filepath, meds.subject_splits_filepath,
                 meds.dataset_metadata_filepath):
        if (root / meta).is_file():
            files[meta] = root / meta
    return RawTables(
        source=NAME, root=root, profile_fields=list(vocab.profile_fields),
        admissions=admissions, patients=patients,
        diagnoses=coded("diagnosis"), procedures=coded("procedure"),
        prescriptions=prescriptions,
        dx_titles=_titles(root, vocab, "diagnosis"), px_titles=_titles(root, vocab, "procedure"),
        files=files,
        labels={**{t: label for t in ("admissions", "patients", "diagnoses", "procedures",
                                      "prescriptions")},
                "dx_titles": meds.code_metadata_filepath,
                "px_titles": meds.code_metadata_filepath,
                "splits": meds.subject_splits_filepath},
        splits=_splits(root),
    )


SOURCE = Source(
    name=NAME,
    title="a MEDS dataset: data/**/*.parquet and metadata/",
    tables="data/**/*.parquet; metadata/dataset.json, codes.parquet, subject_splits.parquet "
           "where present",
    profile_fields=("gender", "age", "insurance", "language", "admission_type", "marital_status",
                    "race"),
    read=read,
    option_help=OPTIONS,
)
