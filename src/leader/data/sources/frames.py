"""The canonical event frames every source produces, and the vectorised checks that fill them.

Why one schema: :mod:`leader.data.cohort` applies the cohort rules once, whatever the raw format.
A source module turns its files into these lazy frames (see docs/data.md for the table):

- ``admissions``: ``patient_id`` (Int64), ``hadm_id`` (Int64), ``admittime`` (Datetime), and one
  String column per visit-level profile field of the source (all but ``gender`` and ``age``)
- ``patients``: ``patient_id``, ``gender`` (String), ``birth_year`` (Int64) and ``birth_date``
  (Date, null when only the year is known: then the age is the difference of calendar years)
- ``diagnoses`` / ``procedures``: ``hadm_id``, ``code`` (``icd9:4019``, see ``dataset.icd_key``)
- ``prescriptions``: ``hadm_id``, ``ndc``, ``gsn``, ``drug`` (Strings for the mapping routes of
  :mod:`leader.data.drugs`) and, where the source's vocabulary names the class, ``atc3``
- ``dx_titles`` / ``px_titles``: ``code``, ``title`` and, where the source has them (MIMIC-III),
  ``short_title``
- ``splits`` (optional): ``patient_id``, ``split`` (train/val/test) from the data itself

Row frames also carry ``_row`` (1-based data row in the file, the order codes keep) and ``_bad``
(why the row is malformed, or null), so one collect finds the first malformed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from leader.data.sources.csvfiles import read_error
from leader.errors import LeaderError

# the last two: ISO 8601 with a T, and Parquet timestamps read back as text (OMOP, MEDS)
DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%d %H:%M:%S%.f")
MISSING_VALUES = ("", "?")  # MIMIC-IV writes "?" for an unknown language
MAX_AGE = 90  # MIMIC shifts ages above 89 (MIMIC-III to ~300 years): pool them at 90
ROW_TABLES = ("admissions", "patients", "diagnoses", "procedures", "prescriptions")


@dataclass
class RawTables:
    """One source's data as lazy canonical frames, plus where each came from.

    ``files``: every input file (hashed into the manifest), keyed by its label; ``labels``: the
    label that error messages use for each canonical table; ``paths``: the file behind a table
    when there is exactly one (so a CSV parse error can be located to its row).
    """

    source: str
    root: Path
    profile_fields: list[str]
    admissions: pl.LazyFrame
    patients: pl.LazyFrame
    diagnoses: pl.LazyFrame
    procedures: pl.LazyFrame
    prescriptions: pl.LazyFrame
    dx_titles: pl.LazyFrame
    px_titles: pl.LazyFrame
    files: dict[str, Path]
    labels: dict[str, str]
    paths: dict[str, Path] = field(default_factory=dict)
    splits: pl.LazyFrame | None = None

    def label(self, table: str) -> str:
        return self.labels[table]

    def collect(self, table: str, lf: pl.LazyFrame | None = None) -> pl.DataFrame:
        """Collect ``table`` (or ``lf`` derived from it) with its file named in any error."""
        frame = getattr(self, table) if lf is None else lf
        return collect_checked(frame, self.labels[table], self.paths.get(table))


def file_label(path: Path, root: Path) -> str:
    """The file name to put in messages and the manifest: relative to the root the user gave."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def check_root(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise LeaderError(f"{root}: directory not found (expected the raw {what} tables)")
    return root


# ---------------------------------------------------------------------------------------------
# Parsing expressions (vectorised checks that name the column and the bad value)


def clean_str(name: str | pl.Expr) -> pl.Expr:
    """Stripped string, with empty and MIMIC's missing markers as null."""
    s = (pl.col(name) if isinstance(name, str) else name).str.strip_chars()
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


# ---------------------------------------------------------------------------------------------
# Canonical frame builders shared by the sources


def admissions_frame(
    lf: pl.LazyFrame, ids: dict[str, tuple[pl.Expr, str]], fields: dict[str, pl.Expr]
) -> pl.LazyFrame:
    """``ids``: patient_id / hadm_id / admittime → (parsed expression, raw column for messages);
    ``fields``: visit-level profile field → its (string) expression."""
    what = {"patient_id": "an integer patient id", "hadm_id": "an integer admission id",
            "admittime": "a date-time like 2150-01-31 13:45:00"}
    checks = [bad_if(expr, column, what[name], required=True)
              for name, (expr, column) in ids.items()]
    return with_bad(lf, checks).select(
        "_row", "_bad", *[expr.alias(name) for name, (expr, _) in ids.items()],
        *[clean_str(expr).alias(name) for name, expr in fields.items()],
    )


def events_frame(lf: pl.LazyFrame, hadm: str, code: pl.Expr,
                 checks: list[pl.Expr] | None = None) -> pl.LazyFrame:
    """Diagnosis/procedure rows → (hadm_id, code); an absent admission id or code is a counted
    drop later, a non-numeric one is malformed."""
    parsed = parse_int(hadm)
    checks = [bad_if(parsed, hadm, "an integer admission id"), *(checks or [])]
    return with_bad(lf, checks).select("_row", "_bad", parsed.alias("hadm_id"), code.alias("code"))


def prescriptions_frame(lf: pl.LazyFrame, hadm: str, drug_cols: dict[str, pl.Expr],
                        checks: list[pl.Expr] | None = None) -> pl.LazyFrame:
    """Drug rows → (hadm_id, ndc, gsn, drug[, atc3]); ``drug_cols`` gives each as an expression."""
    parsed = parse_int(hadm)
    checks = [bad_if(parsed, hadm, "an integer admission id"), *(checks or [])]
    return with_bad(lf, checks).select(
        "_row", "_bad", parsed.alias("hadm_id"),
        *[clean_str(expr).alias(name) for name, expr in drug_cols.items()],
    )


def visit_profile(admissions: pl.DataFrame, patients: pl.DataFrame) -> pl.DataFrame:
    """Admissions joined with gender and the age in whole years at the visit (null if unknown).

    With a birth date, birthdays count; with only a birth year (MIMIC-IV's ``anchor_age`` at
    ``anchor_year``), the age is the difference of calendar years.
    """
    joined = admissions.join(patients, on="patient_id", how="left")
    admit, dob = pl.col("admittime"), pl.col("birth_date")

    def month_day(d: pl.Expr) -> pl.Expr:  # Int32 first: month * 100 overflows polars' Int8
        return d.dt.month().cast(pl.Int32) * 100 + d.dt.day().cast(pl.Int32)

    before_birthday = month_day(admit) < month_day(dob)
    age = admit.dt.year() - pl.col("birth_year") - before_birthday.fill_null(False).cast(pl.Int32)
    age = age.cast(pl.Int64)
    age = pl.when(age < 0).then(None).otherwise(pl.min_horizontal(age, pl.lit(MAX_AGE)))
    return joined.with_columns(age.alias("age")).drop("birth_year", "birth_date")


# ---------------------------------------------------------------------------------------------
# Collecting


def collect_checked(lf: pl.LazyFrame, label: str, path: Path | None = None) -> pl.DataFrame:
    """Collect (streaming), turn read failures and malformed rows into a one-line LeaderError."""
    try:
        df = lf.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise read_error(e, label, path) from None
    if "_bad" in df.columns:
        bad = df.filter(pl.col("_bad").is_not_null())
        if bad.height:
            first = bad.sort("_row").head(1)
            row, msg = first["_row"][0], first["_bad"][0]
            more = f" ({bad.height - 1} more malformed rows)" if bad.height > 1 else ""
            raise LeaderError(f"{label} row {row}: {msg}{more}")
        df = df.drop("_bad")
    return df
