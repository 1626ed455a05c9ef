"""OMOP CDM: a hand-written Parquet instance covering what synth does not: standard concepts,
the ingredient hop to ATC, outpatient visits, exact birth dates, the options."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from leader.data.cohort import PrepareConfig, prepare
from leader.data.dataset import Dataset
from leader.errors import LeaderError

CONCEPTS = [  # id, name, domain, vocabulary, code
    (8507, "MALE", "Gender", "Gender", "M"), (8532, "FEMALE", "Gender", "Gender", "F"),
    (101, "Heart failure, unspecified", "Condition", "ICD10CM", "I50.9"),
    (102, "Essential hypertension", "Condition", "ICD10CM", "I10"),
    (111, "Heart failure", "Condition", "SNOMED", "84114007"),
    (112, "Hypertensive disorder", "Condition", "SNOMED", "38341003"),
    (201, "Venous catheterization, not elsewhere classified", "Procedure", "ICD9Proc", "38.93"),
    (211, "Catheterization of vein", "Procedure", "SNOMED", "392230005"),
    (300, "acetaminophen 500 MG Oral Tablet", "Drug", "RxNorm", "198440"),
    (301, "acetaminophen", "Drug", "RxNorm", "161"),
    (400, "paracetamol", "Drug", "ATC", "N02BE01"),
    (9201, "Inpatient Visit", "Visit", "Visit", "IP"),
    (9202, "Outpatient Visit", "Visit", "Visit", "OP"),
    (262, "Emergency Room and Inpatient Visit", "Visit", "Visit", "ERIP"),
]
# visit id, person, visit concept, start
VISITS = [(10, 1, 9201, datetime(2020, 6, 14, 9)), (11, 1, 9201, datetime(2021, 6, 16, 9)),
          (12, 1, 9202, datetime(2021, 8, 1, 9)), (20, 2, 262, datetime(2020, 1, 1, 9)),
          (30, 3, 9201, datetime(2019, 3, 3, 9))]


def write(root: Path, relationship: bool = True) -> Path:
    root.mkdir(parents=True)
    pl.DataFrame({
        "person_id": [1, 2, 3], "gender_concept_id": [8507, 8532, 8507],
        "year_of_birth": [1950, 1980, 1960], "month_of_birth": [6, None, None],
        "day_of_birth": [15, None, None], "race_concept_id": [0, 0, 0],
        "ethnicity_concept_id": [0, 0, 0], "race_source_value": ["WHITE", None, "ASIAN"],
    }).write_parquet(root / "person.parquet")
    pl.DataFrame({
        "visit_occurrence_id": [v[0] for v in VISITS], "person_id": [v[1] for v in VISITS],
        "visit_concept_id": [v[2] for v in VISITS],
        "visit_start_date": [v[3].date() for v in VISITS],
        "visit_start_datetime": [v[3] for v in VISITS],
        "visit_source_value": ["ELECTIVE", "URGENT", "CLINIC", "EW EMER.", "ELECTIVE"],
        "admitted_from_concept_id": [0] * 5,
    }).write_parquet(root / "visit_occurrence.parquet")
    visit_ids = [v[0] for v in VISITS]
    pl.DataFrame({
        "condition_occurrence_id": range(1, 11), "person_id": [1, 1, 1, 1, 1, 1, 2, 2, 3, 3],
        "visit_occurrence_id": [x for v in visit_ids for x in (v, v)],
        "condition_concept_id": [111, 112] * 5, "condition_source_concept_id": [101, 102] * 5,
        "condition_start_date": [date(2020, 1, 1)] * 10,
    }).write_parquet(root / "condition_occurrence.parquet")
    pl.DataFrame({
        "procedure_occurrence_id": range(1, 6), "person_id": [1, 1, 1, 2, 3],
        "visit_occurrence_id": visit_ids, "procedure_concept_id": [211] * 5,
        "procedure_source_concept_id": [201] * 5,
    }).write_parquet(root / "procedure_occurrence.parquet")
    pl.DataFrame({
        "drug_exposure_id": range(1, 11), "person_id": [1, 1, 1, 1, 1, 1, 2, 2, 3, 3],
        "visit_occurrence_id": [x for v in visit_ids for x in (v, v)],
        "drug_concept_id": [300, 0] * 5,
        "drug_source_value": ["Tylenol 500", "00002475977"] * 5,  # heparin's NDC → B01A
    }).write_parquet(root / "drug_exposure.parquet")
    pl.DataFrame({
        "concept_id": [c[0] for c in CONCEPTS], "concept_name": [c[1] for c in CONCEPTS],
        "domain_id": [c[2] for c in CONCEPTS], "vocabulary_id": [c[3] for c in CONCEPTS],
        "concept_code": [c[4] for c in CONCEPTS],
    }).write_parquet(root / "concept.parquet")
    if relationship:
        pl.DataFrame({"concept_id_1": [300, 301], "concept_id_2": [301, 400],
                      "relationship_id": ["RxNorm has ing", "RxNorm - ATC"]}
                     ).write_parquet(root / "concept_relationship.parquet")
    return root


def run(tmp_path: Path, relationship: bool = True, **options) -> tuple[dict, Dataset]:
    root = write(tmp_path / "omop", relationship)
    config = PrepareConfig.for_source("omop", split=(0.34, 0.33, 0.33))
    m = prepare("omop", root, tmp_path / "out", config, options=options or None)
    return m, Dataset.load(tmp_path / "out")


def test_source_codes_ingredient_hop_and_profile(tmp_path):
    m, ds = run(tmp_path)
    v = ds.visits.sort("hadm_id")
    assert v["hadm_id"].to_list() == ["10", "11", "20", "30"]  # 12 is an outpatient visit
    assert m["drops"]["diagnoses_rows_admission_not_in_admissions"] == 2
    assert set(ds.vocab["diagnoses"].codes) == {"icd10:I509", "icd10:I10"}
    assert ds.vocab["diagnoses"].title("icd10:I509") == "Heart failure, unspecified"
    assert ds.vocab["procedures"].codes == ["icd9:3893"]
    assert set(ds.vocab["drugs"].codes) == {"N02B", "B01A"}  # ingredient → ATC; NDC route
    assert m["mapping"]["vocabulary"] == 5 and m["mapping"]["ndc"] == 5  # outpatient rows too
    # born 1950-06-15: 69 the day before the 70th birthday; year-only births: calendar years
    assert v["age"].to_list() == [69, 71, 40, 59]
    assert v["gender"].to_list() == ["MALE", "MALE", "FEMALE", "MALE"]
    assert v["race"].to_list() == ["WHITE", "WHITE", "unknown", "ASIAN"]
    assert v["admission_type"].to_list() == ["ELECTIVE", "URGENT", "EW EMER.", "ELECTIVE"]
    assert ds.profile_fields == ["gender", "age", "race", "ethnicity", "admission_type",
                                 "admission_source"]


def test_standard_codes(tmp_path):
    _, ds = run(tmp_path, codes="standard")
    assert set(ds.vocab["diagnoses"].codes) == {"snomed:84114007", "snomed:38341003"}
    assert ds.vocab["diagnoses"].title("snomed:38341003") == "Hypertensive disorder"
    assert ds.vocab["procedures"].codes == ["snomed:392230005"]


def test_inpatient_concepts_option(tmp_path):
    _, ds = run(tmp_path, inpatient_concepts="9201")
    assert sorted(ds.visits["hadm_id"]) == ["10", "11", "30"]


def test_without_concept_relationship_drugs_take_the_ndc_routes(tmp_path):
    m, ds = run(tmp_path, relationship=False)
    assert m["mapping"]["vocabulary"] == 0 and m["mapping"]["ndc"] == 5
    assert ds.vocab["drugs"].codes == ["B01A"]


@pytest.mark.parametrize("options, expected", [
    ({"codes": "snomed"}, "expected source or standard"),
    ({"inpatient_concepts": "inpatient"}, "expected comma-separated concept ids"),
])
def test_bad_options(tmp_path, options, expected):
    with pytest.raises(LeaderError, match=expected):
        run(tmp_path, **options)


def test_missing_concept_table(tmp_path):
    root = write(tmp_path / "omop")
    (root / "concept.parquet").unlink()
    with pytest.raises(LeaderError, match="concept.parquet: file not found"):
        prepare("omop", root, tmp_path / "out")


def test_synth_cli_writes_omop(tmp_path):
    from typer.testing import CliRunner

    from leader.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["synth", "--format", "omop", "--patients", "20",
                                      "--out", str(tmp_path / "raw")])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "raw").iterdir()}
    assert {"person.csv.gz", "visit_occurrence.csv.gz", "condition_occurrence.csv.gz",
            "procedure_occurrence.csv.gz", "drug_exposure.csv.gz", "concept.csv.gz",
            "concept_relationship.csv.gz", "ground_truth.parquet"} <= names
    concept = pl.read_csv(tmp_path / "raw" / "concept.csv.gz", infer_schema=False)
    assert concept["concept_id"].n_unique() == concept.height
    assert {"ICD9CM", "ICD10CM", "ICD9Proc", "ICD10PCS", "RxNorm", "ATC"} <= set(
        concept["vocabulary_id"])


def test_corrupt_or_duplicated_parquet_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write(tmp_path / "omop")
    path = root / "person.parquet"
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_arrays([*table.columns, table.column("person_id")],
                                        names=[*table.column_names, "PERSON_ID"]), path)
    with pytest.raises(LeaderError, match="person.parquet: duplicated column 'PERSON_ID'"):
        prepare("omop", root, tmp_path / "out")
    path.write_bytes(b"PAR1 cut short")
    with pytest.raises(LeaderError, match="person.parquet: not a readable Parquet file"):
        prepare("omop", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
