"""Prescription rows → ATC level 3 (the 4-character class, e.g. ``N02B``), and ATC3 names.

Routes are tried in order, as the lineage does with NDC first and the others as fall-backs:

1. ``ndc``: the product code, through ``atc2rxnorm_ndc2atc3.csv`` (the NDC → RxNorm → ATC output
   of the GAMENet/MoleRec pipeline), then the ``ndc`` column of ``gsn_atc_ndc_mapping.csv.gz``;
2. ``gsn``: the generic sequence number (MIMIC-IV may list several, space-separated; the first
   that maps wins) through ``gsn_atc_ndc_mapping.csv.gz``;
3. ``name``: the ``drug`` string, matched case-insensitively and exactly, through
   ``mimic_drug_to_atc.csv.gz``.

Each row gets a ``route`` (``ndc``/``gsn``/``name``, ``unmapped``, or ``no_ndc`` when the NDC is 0
or empty and the cohort rule drops such rows), so the manifest can count what each route did.
Everything is a polars join over the bundled tables; a key that maps to several classes takes the
most frequent one (ties: alphabetical), so the result never depends on file order.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import polars as pl

DRUG_RESOURCES = Path(__file__).parent / "resources" / "drugs"
NDC_FILE = "atc2rxnorm_ndc2atc3.csv"
GSN_FILE = "gsn_atc_ndc_mapping.csv.gz"
NAME_FILE = "mimic_drug_to_atc.csv.gz"
NAMES_FILE = "atc_coding.csv.gz"
MAPPING_FILES = (NDC_FILE, GSN_FILE, NAME_FILE, NAMES_FILE)
ROUTES = ("ndc", "gsn", "name")
NDC_WIDTH = 11
GSN_WIDTH = 6


def resource(name: str) -> Path:
    return DRUG_RESOURCES / name


def _read(name: str) -> pl.DataFrame:
    return pl.read_csv(resource(name), infer_schema=False)


def atc3_expr(atc: pl.Expr) -> pl.Expr:
    """ATC code → its 4-character level-3 prefix; shorter codes (levels 1-2) give null."""
    s = atc.str.strip_chars().str.to_uppercase()
    return pl.when(s.str.len_chars() >= 4).then(s.str.slice(0, 4))


def ndc_expr(ndc: pl.Expr) -> pl.Expr:
    """NDC as an 11-digit string (restores leading zeros lost by spreadsheets); null if absent,
    not numeric, or all zeros (MIMIC's "0" means "no product code")."""
    s = ndc.str.strip_chars().str.replace_all("-", "", literal=True)
    padded = s.str.zfill(NDC_WIDTH)
    ok = s.str.contains(r"^\d{1,11}$") & padded.str.contains(r"[1-9]")
    return pl.when(ok).then(padded)


def _one_per_key(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """Resolve keys that map to several classes: most frequent class, then alphabetical."""
    return (
        df.drop_nulls([key, "atc3"])
        .group_by(key, "atc3")
        .len()
        .sort([key, "len", "atc3"], descending=[False, True, False])
        .unique(key, keep="first", maintain_order=True)
        .select(key, "atc3")
    )


@cache
def ndc_map() -> pl.DataFrame:
    """``ndc`` → ``atc3``: the NDC → ATC3 table first, the GSN table's NDC column for the rest."""
    primary = _one_per_key(
        _read(NDC_FILE).select(ndc_expr(pl.col("ndc")).alias("ndc"), atc3_expr(pl.col("atc3"))),
        "ndc",
    )
    secondary = _one_per_key(
        _read(GSN_FILE).select(
            ndc_expr(pl.col("ndc")).alias("ndc"), atc3_expr(pl.col("atc")).alias("atc3")
        ),
        "ndc",
    )
    return pl.concat([primary, secondary.join(primary, on="ndc", how="anti")])


@cache
def gsn_map() -> pl.DataFrame:
    table = _read(GSN_FILE).select(
        pl.col("gsn").str.strip_chars().str.zfill(GSN_WIDTH).alias("gsn"),
        atc3_expr(pl.col("atc")).alias("atc3"),
    )
    return _one_per_key(table, "gsn")


@cache
def name_map() -> pl.DataFrame:
    table = _read(NAME_FILE).select(
        pl.col("drug").str.strip_chars().str.to_lowercase().alias("name"),
        atc3_expr(pl.col("atc_code")).alias("atc3"),
    )
    return _one_per_key(table, "name")


@cache
def atc3_names() -> dict[str, str]:
    """ATC3 code → lower-case class name (from the WHO ATC index via the ethos table)."""
    table = _read(NAMES_FILE).filter(pl.col("atc_code").str.len_chars() == 4)
    return dict(zip(table["atc_code"], table["atc_name"].str.strip_chars(), strict=True))


def map_prescriptions(rx: pl.LazyFrame, drop_ndc_zero: bool = True) -> pl.LazyFrame:
    """Add ``atc3`` (null when unmapped or dropped) and ``route`` to rows with ``ndc``, ``gsn``,
    ``drug`` columns. With ``drop_ndc_zero`` (the lineage's rule) rows without an NDC are not
    mapped by the other routes; they are marked ``no_ndc`` for the caller to drop and count."""
    gsn = gsn_map()
    rx = rx.with_columns(
        ndc_expr(pl.col("ndc")).alias("_ndc"),
        pl.col("drug").str.strip_chars().str.to_lowercase().alias("_name"),
        pl.col("gsn")
        .str.strip_chars()
        .str.split(" ")
        .list.eval(
            pl.element()
            .filter(pl.element() != "")
            .str.zfill(GSN_WIDTH)
            .replace_strict(gsn["gsn"], gsn["atc3"], default=None, return_dtype=pl.String)
        )
        .list.drop_nulls()
        .list.first()
        .alias("_atc_gsn"),
    )
    ndc = ndc_map().lazy().rename({"ndc": "_ndc", "atc3": "_atc_ndc"})
    name = name_map().lazy().rename({"name": "_name", "atc3": "_atc_name"})
    rx = rx.join(ndc, on="_ndc", how="left", maintain_order="left")
    rx = rx.join(name, on="_name", how="left", maintain_order="left")
    skip = pl.col("_ndc").is_null() if drop_ndc_zero else pl.lit(False)
    route = (
        pl.when(skip).then(pl.lit("no_ndc"))
        .when(pl.col("_atc_ndc").is_not_null()).then(pl.lit("ndc"))
        .when(pl.col("_atc_gsn").is_not_null()).then(pl.lit("gsn"))
        .when(pl.col("_atc_name").is_not_null()).then(pl.lit("name"))
        .otherwise(pl.lit("unmapped"))
    )
    atc3 = pl.when(~skip).then(pl.coalesce("_atc_ndc", "_atc_gsn", "_atc_name"))
    return rx.with_columns(route.alias("route"), atc3.alias("atc3")).drop(
        "_ndc", "_name", "_atc_gsn", "_atc_ndc", "_atc_name"
    )


def route_counts(mapped: pl.DataFrame) -> dict[str, int]:
    """Rows per route, every route present (zero when unused)."""
    counts = dict(mapped.group_by("route").len().iter_rows())
    return {r: int(counts.get(r, 0)) for r in (*ROUTES, "unmapped", "no_ndc")}
