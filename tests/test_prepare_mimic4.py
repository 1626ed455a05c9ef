"""`leader prepare --source mimic4` on a tiny directory in the exact MIMIC-IV v2.2 hosp/ layout."""

from __future__ import annotations

import gzip
import random
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from leader.data.cohort import PrepareConfig, prepare
from leader.data.dataset import Dataset
from leader.errors import LeaderError

# Columns exactly as in MIMIC-IV v2.2 hosp/ (all read, most unused by prepare).
COLUMNS = {
    "admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                   "admission_type", "admit_provider_id", "admission_location",
                   "discharge_location", "insurance", "language", "marital_status", "race",
                   "edregtime", "edouttime", "hospital_expire_flag"],
    "patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    "diagnoses_icd": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    "procedures_icd": ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"],
    "prescriptions": ["subject_id", "hadm_id", "pharmacy_id", "poe_id", "poe_seq",
                      "order_provider_id", "starttime", "stoptime", "drug_type", "drug",
                      "formulary_drug_cd", "gsn", "ndc", "prod_strength", "form_rx",
                      "dose_val_rx", "dose_unit_rx", "form_val_disp", "form_unit_disp",
                      "doses_per_24_hrs", "route"],
    "d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
    "d_icd_procedures": ["icd_code", "icd_version", "long_title"],
}

# "V1582" exists as a string in both versions; the titles tell them apart.
DX = [("V1582", 9, "History of tobacco use"), ("V1582", 10, "Car driver injured (ICD-10)"),
      ("4019", 9, "Unspecified essential hypertension"), ("I10", 10, "Essential hypertension"),
      ("E119", 10, "Type 2 diabetes mellitus without complications")]
PX = [("3893", 9, "Venous catheterization"), ("0BH17EZ", 10, "Insertion of airway")]
# (ndc, gsn, drug) → expected class: NDC route, multi-GSN route, name route, unmapped, NDC 0
RX = [("00002475977", "", "Heparin", "B01A"),
      ("99999999999", "999999 002947", "Bisacodyl", "A06A"),
      ("99999999999", "", "Furosemide", "C03C"),
      ("99999999998", "", "no such drug", None),
      ("0", "002947", "Bisacodyl", None)]


def write_table(hosp: Path, name: str, rows: list[dict]) -> None:
    frame = pl.DataFrame(
        [{c: r.get(c) for c in COLUMNS[name]} for r in rows],
        schema={c: pl.String for c in COLUMNS[name]},
    )
    with gzip.open(hosp / f"{name}.csv.gz", "wb") as f:
        frame.write_csv(f)


def make_mimic4(root: Path, patients: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    hosp = root / "hosp"
    hosp.mkdir(parents=True)
    adm, pat, dx, px, rx = [], [], [], [], []
    for p in range(patients):
        sid = str(10_000_000 + p)
        year = rng.randint(2110, 2180)
        pat.append({"subject_id": sid, "gender": rng.choice("FM"), "anchor_age": str(40 + p % 50),
                    "anchor_year": str(year), "anchor_year_group": "2011 - 2013"})
        for v in range(1 + p % 3):
            hadm = str(20_000_000 + p * 10 + v)
            t = datetime(year + v, 3, 1) + timedelta(hours=rng.randint(0, 5000))
            adm.append({
                "subject_id": sid, "hadm_id": hadm, "admittime": f"{t:%Y-%m-%d %H:%M:%S}",
                "admission_type": rng.choice(["EW EMER.", "ELECTIVE"]),
                "insurance": rng.choice(["Medicare", "Other"]),
                "language": rng.choice(["ENGLISH", "?"]), "marital_status": "",
                "race": rng.choice(["WHITE", "ASIAN"]),
            })
            for i, (code, version, _) in enumerate(rng.sample(DX, 3)):
                dx.append({"subject_id": sid, "hadm_id": hadm, "seq_num": str(i + 1),
                           "icd_code": code, "icd_version": str(version)})
            code, version, _ = rng.choice(PX)
            px.append({"subject_id": sid, "hadm_id": hadm, "seq_num": "1",
                       "icd_code": code, "icd_version": str(version)})
            for ndc, gsn, drug, _ in RX:
                rx.append({"subject_id": sid, "hadm_id": hadm, "ndc": ndc, "gsn": gsn,
                           "drug": drug})
    write_table(hosp, "admissions", adm)
    write_table(hosp, "patients", pat)
    write_table(hosp, "diagnoses_icd", dx)
    write_table(hosp, "procedures_icd", px)
    write_table(hosp, "prescriptions", rx)
    write_table(hosp, "d_icd_diagnoses",
                [{"icd_code": c, "icd_version": str(v), "long_title": t} for c, v, t in DX])
    write_table(hosp, "d_icd_procedures",
                [{"icd_code": c, "icd_version": str(v), "long_title": t} for c, v, t in PX])
    return root


@pytest.fixture(scope="module")
def mimic4_root(tmp_path_factory) -> Path:
    return make_mimic4(tmp_path_factory.mktemp("m4") / "raw")


def test_mimic4_versions_kept_apart(mimic4_root, tmp_path):
    m = prepare("mimic4", mimic4_root, tmp_path / "out")
    ds = Dataset.load(tmp_path / "out")
    dx = ds.vocab["diagnoses"]
    assert "icd9:V1582" in dx.index and "icd10:V1582" in dx.index
    assert dx.title("icd9:V1582") == "History of tobacco use"
    assert dx.title("icd10:V1582") == "Car driver injured (ICD-10)"
    assert set(ds.vocab["procedures"].codes) == {"icd9:3893", "icd10:0BH17EZ"}
    assert m["titles_missing"] == {"diagnoses": 0, "procedures": 0, "drugs": 0}
    assert m["config"]["top_procedures"] == 1000  # MIMIC-IV default
    assert set(ds.drugs.codes) == {"B01A", "A06A", "C03C"}
    visits = sum(1 + p % 3 for p in range(40))
    assert m["stats"]["visits"] == visits and m["stats"]["patients"] == 40
    assert m["mapping"] == {"prescription_rows": 5 * visits, "ndc": visits, "gsn": visits,
                            "name": visits, "unmapped": visits, "no_ndc": visits}
    assert m["stats"]["single_visit_patients"] == sum(1 for p in range(40) if p % 3 == 0)


def test_mimic4_profile(mimic4_root, tmp_path):
    prepare("mimic4", mimic4_root, tmp_path / "out")
    ds = Dataset.load(tmp_path / "out")
    v = ds.visits
    assert ds.profile_fields == ["gender", "age", "insurance", "language", "admission_type",
                                 "marital_status", "race"]
    assert set(v["language"].unique()) <= {"ENGLISH", "unknown"}  # "?" means unknown
    assert (v["marital_status"] == "unknown").all()
    first = v.filter(pl.col("patient_id") == "10000002").sort("visit_index")
    # anchor_age 42 at anchor_year; visit v happens in anchor_year + v
    assert first["age"].to_list() == [42, 43, 44]
    assert v["age"].max() <= 90


def test_mimic4_root_may_be_hosp_itself(mimic4_root, tmp_path):
    a = prepare("mimic4", mimic4_root, tmp_path / "a")
    b = prepare("mimic4", mimic4_root / "hosp", tmp_path / "b")
    assert a["stats"] == b["stats"]
    assert set(a["inputs"]) == {f"hosp/{n}.csv.gz" for n in COLUMNS}
    assert set(b["inputs"]) == {f"{n}.csv.gz" for n in COLUMNS}


def test_mimic4_bad_icd_version(tmp_path):
    root = make_mimic4(tmp_path / "raw", patients=5)
    path = root / "hosp" / "diagnoses_icd.csv.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",11"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(LeaderError, match=r"diagnoses_icd.csv.gz row 2: column icd_version: "
                                          r"expected 9 or 10, got '11'"):
        prepare("mimic4", root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mimic4_top_procedures_option(mimic4_root, tmp_path):
    m = prepare("mimic4", mimic4_root, tmp_path / "o",
                PrepareConfig.for_source("mimic4", top_procedures=1))
    assert m["stats"]["n_procedures"] == 1
