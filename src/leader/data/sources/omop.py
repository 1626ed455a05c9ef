"""OMOP Common Data Model 5.4: person, inpatient visits, conditions, procedures, drug exposures.

Why these choices: a hospital's OMOP instance keeps the billing ICD codes as *source* concepts
(``*_source_concept_id`` → ``concept``), which are what MIMIC and LEADER use, so diagnoses and
procedures come from them by default (``codes=standard`` uses the standard concepts instead).
Drugs reach ATC level 3 through the vocabulary itself (``concept_relationship``: the drug
concept, or its ingredient, related to an ATC concept) when the tables carry it; rows it does not
name go through the usual NDC / drug-name routes on ``drug_source_value``. Each table is
``NAME.csv``, ``NAME.csv.gz`` or ``NAME.parquet`` directly under ``--root``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from leader.data.drugs import atc3_expr
from leader.data.sources.base import Source, check_options
from leader.data.sources.csvfiles import ALL_SUFFIXES, find_table, scan_table
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
from leader.errors import LeaderError

NAME = "omop"
PROFILE_FIELDS = ("gender", "age", "race", "ethnicity", "admission_type", "admission_source")
# OMOP standard visit concepts: Inpatient Visit, Emergency Room and Inpatient Visit,
# Inpatient Hospital (Athena vocabulary, domain Visit)
INPATIENT_CONCEPTS = "9201,262,8717"
ICD_VOCABULARIES = {"ICD9CM": 9, "ICD10CM": 10, "ICD9Proc": 9, "ICD10PCS": 10}
DX_VOCABULARIES = ("ICD9CM", "ICD10CM")
ATC_RELATIONSHIPS = ("RxNorm - ATC", "Maps to")  # drug (or ingredient) → ATC class
INGREDIENT_RELATIONSHIPS = ("RxNorm has ing", "Has ingredient")
OPTIONS = {
    "codes": "source (default: the *_source_concept_id ICD codes) or standard (the standard "
             "concepts, e.g. SNOMED)",
    "inpatient_concepts": f"visit_concept_id values that count as admissions (default "
                          f"{INPATIENT_CONCEPTS})",
}
# canonical use → (table, required columns, optional columns)
TABLES = {
    "person": ("person", ["person_id", "gender_concept_id", "year_of_birth"],
               ("month_of_birth", "day_of_birth", "race_concept_id", "ethnicity_concept_id",
                "gender_source_value", "race_source_value", "ethnicity_source_value")),
    "visits": ("visit_occurrence", ["visit_occurrence_id", "person_id", "visit_concept_id",
                                    "visit_start_date"],
               ("visit_start_datetime", "visit_source_value", "admitted_from_concept_id",
                "admitted_from_source_value")),
    "conditions": ("condition_occurrence", ["visit_occurrence_id", "condition_concept_id"],
                   ("condition_source_concept_id",)),
    "procedures": ("procedure_occurrence", ["visit_occurrence_id", "procedure_concept_id"],
                   ("procedure_source_concept_id",)),
    "drugs": ("drug_exposure", ["visit_occurrence_id", "drug_concept_id"],
              ("drug_source_value",)),
    "concept": ("concept", ["concept_id", "concept_name", "vocabulary_id", "concept_code"],
                ("domain_id",)),
}
RELATIONSHIP = ("concept_relationship", ["concept_id_1", "concept_id_2", "relationship_id"], ())


def _concept_key(vocabulary: pl.Expr, code: pl.Expr) -> pl.Expr:
    """ICD vocabularies → ``icd9:4019`` (as MIMIC), any other → ``snomed:38341003``."""
    version = vocabulary.replace_strict(ICD_VOCABULARIES, default=None, return_dtype=pl.Int64)
    other = pl.concat_str([vocabulary.str.to_lowercase(), pl.lit(":"), code.str.strip_chars()])
    return pl.when(version.is_not_null()).then(icd_key_expr(code, version)).otherwise(other)


def _parse_options(options: Mapping[str, str]) -> tuple[bool, list[int]]:
    check_options(NAME, options, OPTIONS)
    codes = options.get("codes", "source")
    if codes not in ("source", "standard"):
        raise LeaderError(f"source option codes={codes!r}: expected source or standard")
    text = options.get("inpatient_concepts", INPATIENT_CONCEPTS)
    try:
        inpatient = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        inpatient = []
    if not inpatient:
        raise LeaderError(
            f"source option inpatient_concepts={text!r}: expected comma-separated concept ids"
        )
    return codes == "standard", inpatient


def _drug_classes(concept: pl.LazyFrame, relationship: pl.LazyFrame | None) -> pl.LazyFrame:
    """drug concept id → ATC3 through the vocabulary (itself ATC, related to an ATC concept,
    or its ingredient related to one); several classes: the alphabetically first."""
    atc = concept.filter(pl.col("vocabulary_id") == "ATC").select(
        pl.col("concept_id").alias("target"), atc3_expr(pl.col("concept_code")).alias("atc3")
    ).drop_nulls("atc3")
    paths = [atc.rename({"target": "drug"})]
    if relationship is not None:
        to_atc = relationship.filter(pl.col("relationship_id").is_in(ATC_RELATIONSHIPS)).select(
            pl.col("concept_id_1").alias("drug"), pl.col("concept_id_2").alias("target")
        ).join(atc, on="target").select("drug", "atc3")
        ingredient = relationship.filter(
            pl.col("relationship_id").is_in(INGREDIENT_RELATIONSHIPS)
        ).select(pl.col("concept_id_1").alias("drug"), pl.col("concept_id_2").alias("ing"))
        via = ingredient.join(to_atc.rename({"drug": "ing"}), on="ing").select("drug", "atc3")
        paths += [to_atc, via]
    return pl.concat(paths).group_by("drug").agg(pl.col("atc3").min())


def read(root: Path, options: Mapping[str, str]) -> RawTables:
    standard, inpatient = _parse_options(options)
    root = check_root(Path(root), NAME)
    paths = {k: find_table(root, t, ALL_SUFFIXES) for k, (t, _, _) in TABLES.items()}
    try:
        paths["relationship"] = find_table(root, RELATIONSHIP[0], ALL_SUFFIXES)
    except LeaderError:
        pass  # optional: without it, drugs go through the NDC / name routes
    spec = {**TABLES, "relationship": RELATIONSHIP}
    labels = {k: file_label(p, root) for k, p in paths.items()}
    scans = {k: scan_table(p, labels[k], spec[k][1], spec[k][2]) for k, p in paths.items()}

    concept = scans["concept"].select(
        parse_int("concept_id").alias("concept_id"), clean_str("concept_name").alias("name"),
        clean_str("vocabulary_id").alias("vocabulary_id"),
        clean_str("concept_code").alias("concept_code"), clean_str("domain_id").alias("domain"),
    ).with_columns(_concept_key(pl.col("vocabulary_id"), pl.col("concept_code")).alias("key"))
    names = concept.select(pl.col("concept_id").alias("_cid"), pl.col("name").alias("_cname"))
    names = names.unique("_cid", keep="first")

    def named(lf: pl.LazyFrame, source_value: str, concept_id: str, alias: str) -> pl.LazyFrame:
        """``alias``: the source value where given, else the name of the concept."""
        joined = lf.with_columns(parse_int(concept_id).alias("_cid")).join(
            names, on="_cid", how="left", maintain_order="left")
        return joined.with_columns(
            pl.coalesce(clean_str(source_value), clean_str("_cname")).alias(alias)
        ).drop("_cid", "_cname")

    person = scans["person"]
    for column in ("gender", "race", "ethnicity"):
        person = named(person, f"{column}_source_value", f"{column}_concept_id", f"_{column}")
    pid, year = parse_int("person_id"), parse_int("year_of_birth")
    month, day = parse_int("month_of_birth"), parse_int("day_of_birth")
    patients = with_bad(person, [
        bad_if(pid, "person_id", "an integer person id", required=True),
        bad_if(year, "year_of_birth", "an integer year"),
    ]).select(
        "_row", "_bad", pid.alias("patient_id"), pl.col("_gender").alias("gender"),
        year.alias("birth_year"),
        pl.when(month.is_between(1, 12) & day.is_between(1, 31))
        .then(pl.date(year, month, day)).alias("birth_date"),
    )

    visits = scans["visits"].filter(parse_int("visit_concept_id").is_in(inpatient))
    visits = named(visits, "admitted_from_source_value", "admitted_from_concept_id",
                   "admission_source")
    people = person.select(parse_int("person_id").alias("_pid"), "_race", "_ethnicity")
    visits = visits.with_columns(parse_int("person_id").alias("_pid")).join(
        people.unique("_pid", keep="first"), on="_pid", how="left", maintain_order="left")
    admit = pl.coalesce(parse_datetime("visit_start_datetime"), parse_datetime("visit_start_date"))
    ids = {"patient_id": (parse_int("person_id"), "person_id"),
           "hadm_id": (parse_int("visit_occurrence_id"), "visit_occurrence_id"),
           "admittime": (admit, "visit_start_date")}
    fields = {"race": pl.col("_race"), "ethnicity": pl.col("_ethnicity"),
              "admission_type": pl.col("visit_source_value"),
              "admission_source": pl.col("admission_source")}

    keys = concept.select(pl.col("concept_id").alias("_cid"), pl.col("key").alias("_key"))
    keys = keys.unique("_cid", keep="first")

    def coded(name: str, kind: str) -> pl.LazyFrame:
        column = f"{kind}_concept_id" if standard else f"{kind}_source_concept_id"
        cid = parse_int(column)
        lf = scans[name].with_columns(cid.alias("_cid")).join(keys, on="_cid", how="left",
                                                              maintain_order="left")
        return events_frame(lf, "visit_occurrence_id", pl.col("_key"),
                            [bad_if(cid, column, "an integer concept id")])

    def titles(vocabularies: tuple[str, ...], domain: str) -> pl.LazyFrame:
        keep = pl.col("domain") == domain if standard else pl.col("vocabulary_id").is_in(
            vocabularies)
        return concept.filter(keep).select(pl.col("key").alias("code"),
                                           pl.col("name").alias("title"))

    drug_cid = parse_int("drug_concept_id")
    relationship = None
    if "relationship" in scans:
        relationship = scans["relationship"].select(
            parse_int("concept_id_1").alias("concept_id_1"),
            parse_int("concept_id_2").alias("concept_id_2"),
            clean_str("relationship_id").alias("relationship_id"))
    drugs = scans["drugs"].with_columns(drug_cid.alias("drug")).join(
        _drug_classes(concept, relationship), on="drug", how="left", maintain_order="left")
    prescriptions = prescriptions_frame(drugs, "visit_occurrence_id", {
        "ndc": pl.col("drug_source_value"), "gsn": pl.lit(None, pl.String),
        "drug": pl.col("drug_source_value"), "atc3": pl.col("atc3")},
        [bad_if(drug_cid, "drug_concept_id", "an integer concept id")])
    by_table = {"admissions": "visits", "patients": "person", "diagnoses": "conditions",
                "procedures": "procedures", "prescriptions": "drugs", "dx_titles": "concept",
                "px_titles": "concept"}
    return RawTables(
        source=NAME, root=root, profile_fields=list(PROFILE_FIELDS),
        admissions=admissions_frame(visits, ids, fields),
        patients=patients,
        diagnoses=coded("conditions", "condition"),
        procedures=coded("procedures", "procedure"),
        prescriptions=prescriptions,
        dx_titles=titles(DX_VOCABULARIES, "Condition"),
        px_titles=titles(tuple(v for v in ICD_VOCABULARIES if v not in DX_VOCABULARIES),
                         "Procedure"),
        files={labels[k]: p for k, p in paths.items()},
        labels={t: labels[k] for t, k in by_table.items()},
        paths={t: paths[k] for t, k in by_table.items()},
    )


SOURCE = Source(
    name=NAME,
    title="OMOP CDM 5.4 tables as CSV, CSV.gz or Parquet",
    tables=", ".join(t for t, _, _ in TABLES.values()) + ", concept_relationship (optional)",
    profile_fields=PROFILE_FIELDS,
    read=read,
    option_help=OPTIONS,
    synth=True,
)
