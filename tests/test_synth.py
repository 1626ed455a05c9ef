"""`leader synth`: exact MIMIC layouts, determinism, ground truth, planted structure, prepare."""

from __future__ import annotations

import csv
import gzip
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from leader.data.synth import GROUND_TRUTH, SYNTH_MANIFEST, read_ground_truth, synthesize

PATIENTS = 400
DEMO = resources.files("leader.data") / "resources" / "mimic-iii-demo"

# From the published MIMIC-IV v2.2 hosp/ schema (not from the generator's own constants).
M4_HEADERS = {
    "admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
    "admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,"
    "race,edregtime,edouttime,hospital_expire_flag",
    "patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "diagnoses_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version",
    "procedures_icd": "subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version",
    "prescriptions": "subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,starttime,"
    "stoptime,drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,"
    "dose_unit_rx,form_val_disp,form_unit_disp,doses_per_24_hrs,route",
    "d_icd_diagnoses": "icd_code,icd_version,long_title",
    "d_icd_procedures": "icd_code,icd_version,long_title",
}
M3_TABLES = ["ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS",
             "D_ICD_DIAGNOSES", "D_ICD_PROCEDURES"]


def _header(path: Path) -> list[str]:
    with gzip.open(path, "rt", newline="") as f:
        return next(csv.reader(f))


def _table(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)


@pytest.fixture(scope="module")
def raw4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw4"
    synthesize(out, "mimic4", PATIENTS, seed=7)
    return out


@pytest.fixture(scope="module")
def raw3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw3"
    synthesize(out, "mimic3", PATIENTS, seed=7)
    return out


@pytest.fixture(scope="module")
def raw3_additive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw3-additive"
    synthesize(out, "mimic3", PATIENTS, seed=7, generator="additive")
    return out


def test_mimic4_layout_is_exact(raw4):
    assert sorted(p.name for p in (raw4 / "hosp").iterdir()) == sorted(
        f"{t}.csv.gz" for t in M4_HEADERS
    )
    for table, header in M4_HEADERS.items():
        path = raw4 / "hosp" / f"{table}.csv.gz"
        assert path.read_bytes()[:2] == b"\x1f\x8b", path
        assert ",".join(_header(path)) == header, table
    dx = _table(raw4 / "hosp" / "diagnoses_icd.csv.gz")
    assert set(dx["icd_version"]) == {"9", "10"}  # both code systems, as in MIMIC-IV
    assert not dx["icd_code"].str.contains(r"\.").any()
    rx = _table(raw4 / "hosp" / "prescriptions.csv.gz")
    ndc = rx["ndc"].drop_nulls()
    assert ((ndc.str.len_chars() == 11) | (ndc == "0")).all()
    assert (ndc == "0").any()
    assert rx["gsn"].drop_nulls().str.contains(" ").any()  # several GSNs in one field
    assert rx.is_duplicated().any()  # exact duplicate rows, as in the real table
    patients = _table(raw4 / "hosp" / "patients.csv.gz")
    assert patients.height == PATIENTS
    assert patients["anchor_age"].cast(int).is_between(18, 91).all()


def test_mimic3_layout_matches_demo_headers_in_upper_case(raw3):
    for table in M3_TABLES:
        demo = (DEMO / f"{table}.csv").read_text().splitlines()[0].split(",")
        path = raw3 / f"{table}.csv.gz"
        assert path.read_bytes()[:2] == b"\x1f\x8b", path
        assert _header(path) == [c.upper() for c in demo], table
    assert not (raw3 / "hosp").exists()
    admissions = _table(raw3 / "ADMISSIONS.csv.gz")
    patients = _table(raw3 / "PATIENTS.csv.gz")
    assert patients.height == PATIENTS
    age = admissions.join(patients, on="SUBJECT_ID").select(
        pl.col("ADMITTIME").str.slice(0, 4).cast(int) - pl.col("DOB").str.slice(0, 4).cast(int)
    ).to_series()
    assert age.is_between(17, 101).mean() > 0.8 and (age > 250).any()  # MIMIC-III's 90+ shift
    # codes are real ICD-9 codes from the bundled dictionary
    known = set(_table(DEMO / "D_ICD_DIAGNOSES.csv")["icd9_code"])
    assert set(_table(raw3 / "DIAGNOSES_ICD.csv.gz")["ICD9_CODE"]) <= known


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def digest(out: Path) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
            for p in sorted(out.glob("*.csv.gz"))
        }

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(a, "mimic3", 60, seed=3)
    synthesize(b, "mimic3", 60, seed=3)
    synthesize(c, "mimic3", 60, seed=4)
    assert digest(a) == digest(b)
    assert digest(a)["PRESCRIPTIONS.csv.gz"] != digest(c)["PRESCRIPTIONS.csv.gz"]
    assert pl.read_parquet(a / GROUND_TRUTH).equals(pl.read_parquet(b / GROUND_TRUTH))


def test_ground_truth_one_row_per_admission(raw4):
    classes, truth = read_ground_truth(raw4)
    admissions = _table(raw4 / "hosp" / "admissions.csv.gz")
    assert truth.height == admissions.height
    assert set(truth["hadm_id"]) == set(admissions["hadm_id"])
    assert truth["subject_id"].dtype == pl.String and truth["hadm_id"].dtype == pl.String
    assert 120 <= len(classes) <= 300
    prob = np.array(truth["prob"].to_list())
    assert prob.shape == (truth.height, len(classes))
    assert ((prob >= 0) & (prob <= 1)).all()
    assert set(truth["drugs"].explode().drop_nulls()) <= set(classes)
    # the probabilities are the exact marginals: expected and drawn class counts agree
    drawn = truth["drugs"].list.len().to_numpy()
    has = drawn > 0
    assert abs(prob[has].sum(1).mean() - drawn[has].mean()) < 0.06 * drawn[has].mean()
    assert 10 <= drawn[has].mean() <= 20
    manifest = pl.read_json(raw4 / SYNTH_MANIFEST)
    assert manifest["kind"][0] == "leader-synth" and manifest["seed"][0] == 7


def test_single_visit_share(raw4, raw3):
    for raw in (raw4, raw3):
        _, truth = read_ground_truth(raw)
        visits = truth.group_by("subject_id").len()["len"]
        assert 0.6 <= (visits == 1).mean() <= 0.82
        assert visits.max() > 2


def _visit_drugs(raw: Path) -> tuple[list[str], np.ndarray, pl.DataFrame]:
    classes, truth = read_ground_truth(raw)
    y = np.zeros((truth.height, len(classes)), bool)
    index = {c: i for i, c in enumerate(classes)}
    for row, drugs in enumerate(truth["drugs"].to_list()):
        y[row, [index[d] for d in drugs]] = True
    return classes, y, truth


def test_planted_structure_is_learnable(raw4):
    """Title keywords and earlier drugs shift the drug frequencies far from the marginal."""
    classes, y, truth = _visit_drugs(raw4)
    dx = _table(raw4 / "hosp" / "diagnoses_icd.csv.gz").join(
        _table(raw4 / "hosp" / "d_icd_diagnoses.csv.gz"), on=["icd_code", "icd_version"]
    )
    hyper = dx.filter(pl.col("long_title").str.to_lowercase().str.contains("hypertens"))
    with_hyper = truth["hadm_id"].is_in(hyper["hadm_id"].implode()).to_numpy()
    planted = [classes.index(c) for c in ("C09A", "C07A", "C08C", "C03A") if c in classes]
    assert with_hyper.sum() >= 20
    lift = y[with_hyper][:, planted].mean() / max(y[~with_hyper][:, planted].mean(), 1e-3)
    assert lift > 3, lift
    # persistence: a class in the previous admission is much more likely again
    later = np.flatnonzero(truth["visit_index"].to_numpy() > 0)
    prev, now = y[later - 1], y[later]
    assert now[prev].mean() > 2 * now.mean()


def test_interacting_pairs_are_thinned(raw3_additive):
    """Pairs from the DDI table are drawn together less often than their marginals predict
    (the additive generator's drop chance, 0.7; the clinical one is tested in
    test_synth_clinical.py)."""
    classes, y, truth = _visit_drugs(raw3_additive)
    prob = np.array(truth["prob"].to_list())
    pairs = _table(DEMO.parent / "drugs" / "atc3_interactions.csv")
    idx = {c: i for i, c in enumerate(classes)}
    a = np.array([idx[x] for x, z in pairs.iter_rows() if x in idx and z in idx])
    b = np.array([idx[z] for x, z in pairs.iter_rows() if x in idx and z in idx])
    observed = (y[:, a] & y[:, b]).sum()
    independent = (prob[:, a] * prob[:, b]).sum()  # what independent draws would give
    assert observed < 0.8 * independent


def test_prepare_recovers_planted_drugs(raw4, raw3, tmp_path):
    prepare = pytest.importorskip("leader.data.cohort").prepare
    for source, raw in (("mimic4", raw4), ("mimic3", raw3)):
        manifest = prepare(source, raw, tmp_path / source)
        mapping = manifest["mapping"]
        with_ndc = mapping["prescription_rows"] - mapping["no_ndc"]
        mapped = mapping["ndc"] + mapping["gsn"] + mapping["name"]
        assert mapped / with_ndc > 0.9, mapping
        assert min(mapping["ndc"], mapping["gsn"], mapping["name"]) > 0
        visits = pl.read_parquet(tmp_path / source / "visits.parquet")
        assert visits.height > 0.4 * PATIENTS
        _, truth = read_ground_truth(raw)
        joined = visits.join(truth, on="hadm_id", suffix="_truth")
        assert joined.height == visits.height
        same = joined.select(
            pl.col("drugs").list.sort() == pl.col("drugs_truth").list.sort()
        ).to_series()
        assert same.all(), "prepare should map every planted row back to its class"


def _cli(*args: str):
    from leader.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


def test_cli_writes_and_refuses_existing_output(tmp_path):
    out = tmp_path / "raw"
    result = _cli("synth", "--format", "mimic4", "--patients", "30", "--out", str(out),
                  "--seed", "1")
    assert result.exit_code == 0, result.output
    assert (out / "hosp" / "prescriptions.csv.gz").is_file()
    assert "prescriptions" in result.output
    before = (out / GROUND_TRUTH).read_bytes()
    from leader.errors import LeaderError

    with pytest.raises(LeaderError, match="already exists"):
        synthesize(out, "mimic4", 30, seed=2)
    assert (out / GROUND_TRUTH).read_bytes() == before
    result = _cli("synth", "--format", "mimic4", "--patients", "30", "--out", str(out),
                  "--seed", "2", "--force")
    assert result.exit_code == 0, result.output
    assert (out / GROUND_TRUTH).read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "mimic5", "--patients", "10"], "--format"),
        (["--format", "mimic3", "--patients", "0"], "--patients"),
        (["--format", "mimic3", "--patients", "10", "--generator", "nope"], "--generator"),
        (["--format", "mimic3", "--patients", "10", "--without", "nope"], "nope"),
        (["--format", "mimic3", "--patients", "10", "--rule-weight", "profile=x"], "profile"),
        (["--format", "mimic3", "--patients", "10", "--generator", "additive", "--without",
          "profile"], "--generator clinical"),
    ],
)
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, args, message):
    import subprocess
    import sys

    out = tmp_path / "raw"
    leader = Path(sys.executable).parent / "leader"
    proc = subprocess.run(
        [str(leader), "synth", *args, "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_exits_2(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    leader = Path(sys.executable).parent / "leader"
    proc = subprocess.run(
        [str(leader), "synth", "--format", "mimic3", "--patients", "5", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and str(out) in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
