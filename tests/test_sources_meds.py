"""MEDS: the cohort of meds_etl's own MIMIC-IV conversion equals `--source mimic4` on the same
draw; presets, user vocabularies, visits without a visit-id column, the dataset's split."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from source_cases import MEDS_ETL

from leader.data.cohort import PrepareConfig, prepare
from leader.data.dataset import Dataset
from leader.errors import LeaderError

CONFIG = PrepareConfig.for_source("mimic4")  # the same rules on both sides


def visits(tmp: Path, source: str, root: Path, config=CONFIG, **options) -> pl.DataFrame:
    out = tmp / f"{source}-{len(list(tmp.iterdir()))}"
    prepare(source, root, out, config, options=options or None)
    return Dataset.load(out).visits


def mimic4_as_meds_etl_keeps_it(tmp: Path) -> Path:
    """The fixture's MIMIC-IV draw with what meds_etl drops dropped here too: it writes a
    prescription as NDC/<ndc>, or MIMIC_IV_Drug/<name> only where the NDC is 0, and never the
    GSN, so GSN and drug-name routes cannot map what it converted."""
    raw = tmp / "m4"
    shutil.copytree(MEDS_ETL / "raw", raw)
    path = raw / "hosp" / "prescriptions.csv.gz"
    frame = pl.read_csv(path, infer_schema=False)
    ndc = pl.col("ndc")
    frame = frame.with_columns(
        pl.lit(None, pl.String).alias("gsn"),
        pl.when(ndc.is_not_null() & (ndc != "0")).then(None).otherwise("drug").alias("drug"),
    )
    with gzip.open(path, "wb") as f:
        frame.write_csv(f)
    return raw


@pytest.fixture(scope="module")
def meds_etl_visits(tmp_path_factory) -> pl.DataFrame:
    return visits(tmp_path_factory.mktemp("meds"), "meds", MEDS_ETL / "meds")


def test_meds_etl_conversion_gives_the_mimic4_cohort(meds_etl_visits, tmp_path):
    """Visits, codes (in order), drugs, the whole profile and the seeded split agree."""
    m4 = visits(tmp_path, "mimic4", mimic4_as_meds_etl_keeps_it(tmp_path))
    assert m4.height > 80
    assert meds_etl_visits.columns == m4.columns
    assert meds_etl_visits.equals(m4)


def test_meds_etl_loses_exactly_the_gsn_and_name_routes(tmp_path):
    a = prepare("mimic4", MEDS_ETL / "raw", tmp_path / "a", CONFIG)["mapping"]
    b = prepare("meds", MEDS_ETL / "meds", tmp_path / "b", CONFIG)["mapping"]
    assert b["prescription_rows"] == a["prescription_rows"]
    assert b["ndc"] == a["ndc"] and b["no_ndc"] == a["no_ndc"]
    assert b["unmapped"] == a["unmapped"] + a["gsn"] + a["name"] and a["gsn"] > 0


def test_fixture_is_meds_etl_output():
    meta = json.loads((MEDS_ETL / "meds" / "metadata" / "dataset.json").read_text())
    assert meta["etl_name"] == "meds_etl.mimic" and meta["etl_version"] == "0.3.11"


def to_meds_transforms(src: Path, dst: Path) -> Path:
    """Re-spell the fixture's codes the MEDS-Transforms way, visit ids in ``hadm_id``."""
    shutil.copytree(src, dst)
    code = pl.col("code")
    undotted = code.str.split("/").list.last().str.replace_all(".", "", literal=True)
    respell = (
        pl.when(code.str.starts_with("ICD9CM/")).then("DIAGNOSIS//ICD//9//" + undotted)
        .when(code.str.starts_with("ICD10CM/")).then("ICD10CM//" + undotted)
        .when(code.str.starts_with("ICD9Proc/")).then("PROCEDURE//ICD//9//" + undotted)
        .when(code.str.starts_with("ICD10PCS/")).then("PROCEDURE//ICD//10//" + undotted)
        .when(code.str.starts_with("NDC/")).then("NDC//" + code.str.slice(4))
        .when(code.str.starts_with("MIMIC_IV_Drug/")).then("MEDICATION//" + code.str.slice(14))
        .when(code.str.starts_with("MIMIC_IV_Admission/"))
        .then("HOSPITAL_ADMISSION//" + code.str.slice(19) + "//SOMEWHERE")
        .when(code.str.starts_with("MIMIC_IV_Insurance/")).then("INSURANCE//" + code.str.slice(19))
        .when(code.str.starts_with("MIMIC_IV_Language/")).then("LANGUAGE//" + code.str.slice(18))
        .when(code.str.starts_with("MIMIC_IV_Marital_Status/"))
        .then("MARITAL_STATUS//" + code.str.slice(24))
        .when(code.str.starts_with("MIMIC_IV_Race/")).then("RACE//" + code.str.slice(14))
        .when(code.str.starts_with("MIMIC_IV_Gender/")).then("GENDER//" + code.str.slice(16))
        .otherwise(code)
    )
    for path in sorted((dst / "data").glob("*.parquet")):
        frame = pl.read_parquet(path).with_columns(respell.alias("code"))
        frame.rename({"visit_id": "hadm_id"}).write_parquet(path)
    (dst / "metadata" / "codes.parquet").unlink()
    return dst


def test_meds_transforms_preset(meds_etl_visits, tmp_path):
    root = to_meds_transforms(MEDS_ETL / "meds", tmp_path / "mt")
    v = visits(tmp_path, "meds", root, vocabulary="meds_transforms")
    assert v.equals(meds_etl_visits)


def test_user_vocabulary_file(meds_etl_visits, tmp_path):
    preset = json.loads(_preset_text())
    preset["profile_fields"] = ["gender", "age", "race"]
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(preset))
    v = visits(tmp_path, "meds", MEDS_ETL / "meds", vocabulary=str(path))
    assert v.columns[-4:] == ["gender", "age", "race", "split"]
    assert v.select("hadm_id", "drugs").equals(meds_etl_visits.select("hadm_id", "drugs"))


def _preset_text() -> str:
    from leader.data.sources.meds_vocabulary import PRESETS_DIR

    return (PRESETS_DIR / "meds_etl.json").read_text()


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not a readable JSON vocabulary"),
    ('{"rules": []}', "non-empty list 'rules'"),
    ('{"rules": [{"prefix": "X/", "kind": "lab"}]}', "kind 'lab'"),
    ('{"rules": [{"prefix": "X/", "kind": "diagnosis", "icd_version": 11}]}', "icd_version 11"),
    ('{"rules": [{"prefix": "X/", "kind": "drug", "route": "gsn"}]}', "route 'gsn'"),
    ('{"rules": [{"prefix": "X/", "kind": "diagnosis", "icd_version": 9}]}', "'admission'"),
    ('{"rules": [{"prefix": "X/", "code": "Y", "kind": "birth"}]}', "exactly one of prefix"),
])
def test_bad_vocabulary_file(tmp_path, text, expected):
    path = tmp_path / "vocab.json"
    path.write_text(text)
    with pytest.raises(LeaderError, match=expected):
        prepare("meds", MEDS_ETL / "meds", tmp_path / "o", CONFIG,
                options={"vocabulary": str(path)})
    assert not (tmp_path / "o").exists()


def test_visits_from_admission_events(meds_etl_visits, tmp_path):
    """Without a visit-id column, each admission opens a visit the later events join."""
    v = visits(tmp_path, "meds", MEDS_ETL / "meds", visit_id="none")
    key = ["patient_id", "visit_index"]
    same = ["admittime", "diagnoses", "procedures", "drugs", "admission_type", "split"]
    assert v.select(*key, *same).equals(meds_etl_visits.select(*key, *same))


def test_split_from_data(tmp_path):
    root = tmp_path / "meds"
    shutil.copytree(MEDS_ETL / "meds", root)
    subjects = pl.read_parquet(root / "data").get_column("subject_id").unique().sort()
    names = ["train", "tuning", "held_out"]
    splits = pl.DataFrame({"subject_id": subjects[1:],
                           "split": [names[i % 3] for i in range(len(subjects) - 1)]})
    splits.write_parquet(root / "metadata" / "subject_splits.parquet")
    config = PrepareConfig.for_source("mimic4", split_from_data=True)
    m = prepare("meds", root, tmp_path / "o", config)
    v = Dataset.load(tmp_path / "o").visits
    expected = dict(zip(splits["subject_id"].cast(pl.String),
                        splits["split"].replace({"tuning": "val", "held_out": "test"}),
                        strict=True))
    assert all(expected[p] == s for p, s in v.select("patient_id", "split").iter_rows())
    assert str(subjects[0]) not in set(v["patient_id"])
    assert m["drops"]["patients_not_in_data_split"] <= 1 and m["config"]["split_from_data"]


def test_rxnorm_code_maps_through_parent_atc(tmp_path):
    root = tmp_path / "meds"
    shutil.copytree(MEDS_ETL / "meds", root)
    path = sorted((root / "data").glob("*.parquet"))[0]
    frame = pl.read_parquet(path)
    first = frame.with_row_index().filter(pl.col("code").str.starts_with("NDC/"))["index"][0]
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == first).then(pl.lit("RxNorm/161"))
                               .otherwise("code").alias("code"))
    frame.write_parquet(path)
    codes = pq.read_table(root / "metadata" / "codes.parquet")
    extra = pl.DataFrame({"code": ["RxNorm/161"], "description": ["acetaminophen"],
                          "parent_codes": [["ATC/N02BE01"]]}).to_arrow().cast(codes.schema)
    pq.write_table(pl.concat([pl.from_arrow(codes), pl.from_arrow(extra)]).to_arrow()
                   .cast(codes.schema), root / "metadata" / "codes.parquet")
    m = prepare("meds", root, tmp_path / "o", CONFIG)
    assert m["mapping"]["vocabulary"] == 1


def test_bad_dataset_metadata(tmp_path):
    root = tmp_path / "meds"
    shutil.copytree(MEDS_ETL / "meds", root)
    (root / "metadata" / "dataset.json").write_text('{"dataset_name": 3}')
    with pytest.raises(LeaderError, match="metadata/dataset.json: does not match the MEDS"):
        prepare("meds", root, tmp_path / "o", CONFIG)
