"""`leader synth --format omop`: the planted MIMIC-IV draw written as OMOP CDM 5.4 tables.

Why: `prepare --source omop` needs test data whose cohort is known, so the writer takes the very
frames the MIMIC-IV writer gets (same draw, same ids: ``visit_occurrence_id`` = ``hadm_id``,
``person_id`` = ``subject_id``) and re-shapes them. It also writes the small vocabulary those
rows use: the ICD source concepts (dotted codes, as the OMOP vocabularies spell them), gender and
visit concepts, and per drug class one RxNorm-like concept with an ``RxNorm - ATC`` relationship
to its ATC class, so the reader's vocabulary route is exercised. Made-up concept ids start at
2,000,000,001 (OMOP leaves ids above 2,000,000,000 to local concepts); gender 8507/8532, visit
9201/262, type 32817 are the standard OMOP concept ids.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import polars as pl

from leader.data import drugs as drug_map

LOCAL_CONCEPT_START = 2_000_000_001
EHR_TYPE = 32817
GENDER = {"M": (8507, "MALE"), "F": (8532, "FEMALE")}
VISITS = {9201: "Inpatient Visit", 262: "Emergency Room and Inpatient Visit"}
ICD = {("diagnoses_icd", 9): "ICD9CM", ("diagnoses_icd", 10): "ICD10CM",
       ("procedures_icd", 9): "ICD9Proc", ("procedures_icd", 10): "ICD10PCS"}
COLUMNS = {  # OMOP CDM 5.4, in the specification's order
    "person": ["person_id", "gender_concept_id", "year_of_birth", "month_of_birth",
               "day_of_birth", "birth_datetime", "race_concept_id", "ethnicity_concept_id",
               "location_id", "provider_id", "care_site_id", "person_source_value",
               "gender_source_value", "gender_source_concept_id", "race_source_value",
               "race_source_concept_id", "ethnicity_source_value", "ethnicity_source_concept_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_concept_id",
                         "visit_start_date", "visit_start_datetime", "visit_end_date",
                         "visit_end_datetime", "visit_type_concept_id", "provider_id",
                         "care_site_id", "visit_source_value", "visit_source_concept_id",
                         "admitted_from_concept_id", "admitted_from_source_value",
                         "discharged_to_concept_id", "discharged_to_source_value",
                         "preceding_visit_occurrence_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "condition_start_datetime",
                             "condition_end_date", "condition_end_datetime",
                             "condition_type_concept_id", "condition_status_concept_id",
                             "stop_reason", "provider_id", "visit_occurrence_id",
                             "visit_detail_id", "condition_source_value",
                             "condition_source_concept_id", "condition_status_source_value"],
    "procedure_occurrence": ["procedure_occurrence_id", "person_id", "procedure_concept_id",
                             "procedure_date", "procedure_datetime", "procedure_end_date",
                             "procedure_end_datetime", "procedure_type_concept_id",
                             "modifier_concept_id", "quantity", "provider_id",
                             "visit_occurrence_id", "visit_detail_id", "procedure_source_value",
                             "procedure_source_concept_id", "modifier_source_value"],
    "drug_exposure": ["drug_exposure_id", "person_id", "drug_concept_id",
                      "drug_exposure_start_date", "drug_exposure_start_datetime",
                      "drug_exposure_end_date", "drug_exposure_end_datetime", "verbatim_end_date",
                      "drug_type_concept_id", "stop_reason", "refills", "quantity",
                      "days_supply", "sig", "route_concept_id", "lot_number", "provider_id",
                      "visit_occurrence_id", "visit_detail_id", "drug_source_value",
                      "drug_source_concept_id", "route_source_value", "dose_unit_source_value"],
    "concept": ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
                "standard_concept", "concept_code", "valid_start_date", "valid_end_date",
                "invalid_reason"],
    "concept_relationship": ["concept_id_1", "concept_id_2", "relationship_id",
                             "valid_start_date", "valid_end_date", "invalid_reason"],
}


def dotted(code: pl.Expr, vocabulary: pl.Expr) -> pl.Expr:
    """MIMIC's undotted ICD code as the OMOP vocabularies write it (``4019`` → ``401.9``)."""
    def dot(at: int) -> pl.Expr:
        return pl.when(code.str.len_chars() > at).then(
            code.str.slice(0, at) + "." + code.str.slice(at)).otherwise(code)
    return (
        pl.when(vocabulary == "ICD10PCS").then(code)
        .when(vocabulary == "ICD9Proc").then(dot(2))
        .when((vocabulary == "ICD9CM") & code.str.starts_with("E")).then(dot(4))
        .otherwise(dot(3))
    )


def _shape(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """All CDM columns of ``table`` in order; the ones the draw has no value for stay empty."""
    return df.select([pl.col(c) if c in df.columns else pl.lit(None, pl.String).alias(c)
                      for c in COLUMNS[table]])


class OmopWriters:
    """Takes MIMIC-IV-shaped frames (`synth`'s writer interface), writes OMOP gzip CSVs."""

    source_format = "mimic4"  # the draw it re-shapes

    def __init__(self, root: Path, gzip_level: int = 1):
        self.root, self.level = root, gzip_level
        self.names = {t: f"{t}.csv.gz" for t in COLUMNS}
        self.rows = {t: 0 for t in COLUMNS}
        self.files: dict[str, Any] = {}
        self.concepts = pl.DataFrame(schema={"concept_id": pl.Int64, "vocabulary_id": pl.String,
                                             "concept_code": pl.String, "concept_name": pl.String})
        self.admissions: pl.DataFrame | None = None

    # ------------------------------------------------------------------ the writer interface

    def write(self, table: str, df: pl.DataFrame) -> None:
        if table.startswith("d_icd_"):
            self._add_concepts(self._icd_frame(table.replace("d_icd_", "") + "_icd", df))
        elif table == "admissions":
            self.admissions = df
            self._visits(df)
        elif table == "patients":
            self._person(df)
        elif table in ("diagnoses_icd", "procedures_icd"):
            self._events(table, df)
        elif table == "prescriptions":
            self._drugs(df)

    def close(self) -> None:
        try:
            self._vocabulary()
        finally:
            for f in self.files.values():
                f.close()

    # ------------------------------------------------------------------------------ helpers

    def _emit(self, table: str, df: pl.DataFrame) -> None:
        if table not in self.files:
            self.files[table] = gzip.open(self.root / self.names[table], "wb",
                                          compresslevel=self.level)
        _shape(df, table).write_csv(
            self.files[table], include_header=self.rows[table] == 0,
            datetime_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d")
        self.rows[table] += df.height

    def _icd_frame(self, kind: str, df: pl.DataFrame) -> pl.DataFrame:
        version = pl.col("icd_version").cast(pl.Int64)
        vocabulary = pl.when(version == 9).then(pl.lit(ICD[(kind, 9)])).otherwise(
            pl.lit(ICD[(kind, 10)]))
        return df.select(vocabulary.alias("vocabulary_id"),
                         dotted(pl.col("icd_code").cast(pl.String), vocabulary)
                         .alias("concept_code"),
                         pl.col("long_title").alias("concept_name"))

    def _add_concepts(self, new: pl.DataFrame) -> None:
        """Give (vocabulary, code) pairs not yet known the next local concept ids."""
        new = new.drop_nulls("concept_code").unique(["vocabulary_id", "concept_code"],
                                                    keep="first", maintain_order=True)
        new = new.join(self.concepts, on=["vocabulary_id", "concept_code"], how="anti")
        start = LOCAL_CONCEPT_START + self.concepts.height
        new = new.with_columns(pl.int_range(start, start + new.height, dtype=pl.Int64)
                               .alias("concept_id"))
        self.concepts = pl.concat([self.concepts, new.select(self.concepts.columns)])

    def _concept_ids(self, frame: pl.DataFrame) -> pl.Series:
        """Concept id of each (vocabulary_id, concept_code) row, adding unknown codes."""
        self._add_concepts(frame.select(
            "vocabulary_id", "concept_code",
            pl.col("concept_code").alias("concept_name")))  # a code without a title: its code
        return frame.join(self.concepts, on=["vocabulary_id", "concept_code"], how="left",
                          maintain_order="left")["concept_id"]

    def _visits(self, adm: pl.DataFrame) -> None:
        emergency = pl.col("admission_type").fill_null("").str.contains("EMER")
        self._emit("visit_occurrence", adm.select(
            pl.col("hadm_id").alias("visit_occurrence_id"), pl.col("subject_id").alias("person_id"),
            pl.when(emergency).then(262).otherwise(9201).alias("visit_concept_id"),
            pl.col("admittime").dt.date().alias("visit_start_date"),
            pl.col("admittime").alias("visit_start_datetime"),
            pl.col("dischtime").dt.date().alias("visit_end_date"),
            pl.col("dischtime").alias("visit_end_datetime"),
            pl.lit(EHR_TYPE).alias("visit_type_concept_id"),
            pl.col("admission_type").alias("visit_source_value"),
            pl.lit(0).alias("admitted_from_concept_id"),
            pl.col("admission_location").alias("admitted_from_source_value"),
            pl.lit(0).alias("discharged_to_concept_id"),
            pl.col("discharge_location").alias("discharged_to_source_value"),
        ))

    def _person(self, pats: pl.DataFrame) -> None:
        race = self.admissions.group_by("subject_id", maintain_order=True).agg(
            pl.col("race").first())
        gender = pl.col("gender")
        self._emit("person", pats.join(race, on="subject_id", how="left").select(
            pl.col("subject_id").alias("person_id"),
            gender.replace_strict({k: v[0] for k, v in GENDER.items()}, default=0)
            .alias("gender_concept_id"),
            (pl.col("anchor_year") - pl.col("anchor_age")).alias("year_of_birth"),
            pl.lit(0).alias("race_concept_id"), pl.lit(0).alias("ethnicity_concept_id"),
            pl.col("subject_id").cast(pl.String).alias("person_source_value"),
            gender.alias("gender_source_value"), pl.col("race").alias("race_source_value"),
        ))

    def _events(self, table: str, df: pl.DataFrame) -> None:
        dates = self.admissions.select("hadm_id", pl.col("admittime").dt.date().alias("_date"))
        df = df.join(dates, on="hadm_id", how="left", maintain_order="left")
        version = pl.col("icd_version").cast(pl.Int64)
        vocabulary = pl.when(version == 9).then(pl.lit(ICD[(table, 9)])).otherwise(
            pl.lit(ICD[(table, 10)]))
        codes = df.select(vocabulary.alias("vocabulary_id"),
                          dotted(pl.col("icd_code"), vocabulary).alias("concept_code"))
        kind = "condition" if table == "diagnoses_icd" else "procedure"
        out = f"{kind}_occurrence"
        date = pl.col("chartdate") if "chartdate" in df.columns else pl.col("_date")
        start = self.rows[out] + 1
        self._emit(out, df.select(
            pl.int_range(start, start + pl.len(), dtype=pl.Int64).alias(f"{out}_id"),
            pl.col("subject_id").alias("person_id"),
            pl.lit(0).alias(f"{kind}_concept_id"),
            date.alias(f"{kind}_start_date" if kind == "condition" else "procedure_date"),
            pl.lit(EHR_TYPE).alias(f"{kind}_type_concept_id"),
            pl.col("hadm_id").alias("visit_occurrence_id"),
            pl.col("icd_code").alias(f"{kind}_source_value"),
            self._concept_ids(codes).alias(f"{kind}_source_concept_id"),
        ))

    def _drugs(self, rx: pl.DataFrame) -> None:
        """Rows the NDC/GSN/name routes map get their class's RxNorm-like concept; the rest
        keep concept 0 and their NDC as source value (so the reader counts them the same)."""
        cols = [pl.col(c).cast(pl.String) for c in ("ndc", "gsn", "drug")]
        atc3 = drug_map.map_prescriptions(rx.lazy().select(cols)).collect()["atc3"]
        drug = pl.DataFrame({"vocabulary_id": "RxNorm", "concept_code": atc3}).with_columns(
            pl.concat_str(pl.lit("LEADER-"), pl.col("concept_code")).alias("concept_code"))
        ids = self._concept_ids(drug)
        start = self.rows["drug_exposure"] + 1
        self._emit("drug_exposure", rx.select(
            pl.int_range(start, start + pl.len(), dtype=pl.Int64).alias("drug_exposure_id"),
            pl.col("subject_id").alias("person_id"),
            pl.Series(ids).fill_null(0).alias("drug_concept_id"),
            pl.col("starttime").dt.date().alias("drug_exposure_start_date"),
            pl.col("starttime").alias("drug_exposure_start_datetime"),
            pl.col("stoptime").dt.date().alias("drug_exposure_end_date"),
            pl.col("stoptime").alias("drug_exposure_end_datetime"),
            pl.lit(EHR_TYPE).alias("drug_type_concept_id"),
            pl.col("hadm_id").alias("visit_occurrence_id"),
            pl.col("ndc").cast(pl.String).alias("drug_source_value"),
            pl.lit(0).alias("drug_source_concept_id"),
            pl.col("route").alias("route_source_value"),
            pl.col("dose_unit_rx").alias("dose_unit_source_value"),
        ))

    def _vocabulary(self) -> None:
        """concept (ICD, drug, ATC, gender, visit) and concept_relationship (drug → ATC)."""
        names = drug_map.atc3_names()
        drugs = self.concepts.filter(pl.col("vocabulary_id") == "RxNorm").with_columns(
            pl.col("concept_code").str.replace("LEADER-", "", literal=True).alias("atc3"))
        atc = drugs.select(
            pl.lit("ATC").alias("vocabulary_id"), pl.col("atc3").alias("concept_code"),
            pl.col("atc3").replace_strict(names, default=pl.col("atc3")).alias("concept_name"))
        self._add_concepts(atc)
        drugs = drugs.with_columns(pl.concat_str(pl.lit("products of "), pl.col("atc3"))
                                   .alias("concept_name"))
        local = self.concepts.update(drugs.select("concept_id", "concept_name"), on="concept_id")
        domain = pl.col("vocabulary_id").replace_strict(
            {"ICD9CM": "Condition", "ICD10CM": "Condition", "ICD9Proc": "Procedure",
             "ICD10PCS": "Procedure", "RxNorm": "Drug", "ATC": "Drug"}, default="Observation")
        fixed = pl.DataFrame({
            "concept_id": [v[0] for v in GENDER.values()] + list(VISITS),
            "concept_name": [v[1] for v in GENDER.values()] + list(VISITS.values()),
            "domain_id": ["Gender"] * len(GENDER) + ["Visit"] * len(VISITS),
            "vocabulary_id": ["Gender"] * len(GENDER) + ["Visit"] * len(VISITS),
            "concept_code": [k for k in GENDER] + ["IP", "ERIP"],
            "standard_concept": "S",
        })
        concept = pl.concat([fixed, local.with_columns(
            domain.alias("domain_id"),
            pl.when(pl.col("vocabulary_id") == "ATC").then(pl.lit("C")).alias("standard_concept"),
        )], how="diagonal_relaxed")
        self._emit("concept", concept.with_columns(
            pl.lit("1970-01-01").alias("valid_start_date"),
            pl.lit("2099-12-31").alias("valid_end_date")))
        by_code = self.concepts.filter(pl.col("vocabulary_id") == "ATC").select(
            pl.col("concept_code").alias("atc3"), pl.col("concept_id").alias("concept_id_2"))
        self._emit("concept_relationship", drugs.join(by_code, on="atc3").select(
            pl.col("concept_id").alias("concept_id_1"), "concept_id_2",
            pl.lit("RxNorm - ATC").alias("relationship_id"),
            pl.lit("1970-01-01").alias("valid_start_date"),
            pl.lit("2099-12-31").alias("valid_end_date")))
