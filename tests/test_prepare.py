"""`leader prepare` on the bundled MIMIC-III demo: stats, cohort rules, split, manifest."""

from __future__ import annotations

import gzip
import itertools

import polars as pl
import pytest
from typer.testing import CliRunner

from leader.artifacts import sha256_file
from leader.data.cohort import STATS_KEYS, PrepareConfig, prepare
from leader.data.dataset import UNKNOWN, Dataset, age_bucket
from leader.data.ddi import load_pairs
from leader.data.sources.mimic3 import PROFILE_FIELDS, demo_root

DEMO_TABLES = [
    "ADMISSIONS.csv", "PATIENTS.csv", "DIAGNOSES_ICD.csv", "PROCEDURES_ICD.csv",
    "PRESCRIPTIONS.csv", "D_ICD_DIAGNOSES.csv", "D_ICD_PROCEDURES.csv",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("prep") / "demo"
    prepare("mimic3", "demo", out)
    return Dataset.load(out)


def test_cli_prepare_and_info(tmp_path):
    from leader.cli import _register, app

    _register()
    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(
        app, ["prepare", "--source", "mimic3", "--root", "demo", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "visits.parquet").is_file() and "ddi_rate" in result.output
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0, info.output
    for key in STATS_KEYS:
        assert key in info.output


def test_stats_match_visits(demo):
    v, stats = demo.visits, demo.manifest["stats"]
    assert tuple(stats) == STATS_KEYS
    per_patient = v.group_by("patient_id").len()["len"]
    assert stats["patients"] == v["patient_id"].n_unique() == per_patient.len()
    assert stats["visits"] == v.height
    assert stats["single_visit_patients"] == int((per_patient == 1).sum())
    assert stats["visits_per_patient"] == pytest.approx(v.height / per_patient.len(), abs=1e-4)
    for kind, n_key, mean_key in (
        ("diagnoses", "n_diagnoses", "diagnoses_per_visit"),
        ("procedures", "n_procedures", "procedures_per_visit"),
        ("drugs", "n_drugs", "drugs_per_visit"),
    ):
        used = set(v[kind].explode().to_list())
        assert stats[n_key] == len(demo.vocab[kind]) == len(used)
        assert set(demo.vocab[kind].codes) == used
        assert stats[mean_key] == pytest.approx(v[kind].list.len().mean(), abs=1e-4)
        # counts = visits using the code, most frequent first
        counts = demo.vocab[kind].counts
        assert counts == sorted(counts, reverse=True) and sum(counts) == v[kind].list.len().sum()
    # the demo: 100 patients, 129 admissions before the cohort rules
    assert 50 < stats["patients"] < 100 and stats["patients"] < stats["visits"] <= 129
    assert stats["single_visit_patients"] > 0  # single-visit patients are kept


def test_ddi_rate_brute_force(demo):
    pairs = set(demo.ddi_pairs)
    assert demo.manifest["stats"]["ddi_pairs"] == len(pairs)
    assert all(a in demo.drugs.index and b in demo.drugs.index for a, b in pairs)
    bundled, _ = load_pairs()
    assert pairs == {p for p in bundled if p[0] in demo.drugs.index and p[1] in demo.drugs.index}
    hits = total = 0
    for drugs in demo.visits["drugs"].to_list():
        for a, b in itertools.combinations(sorted(set(drugs)), 2):
            total += 1
            hits += (a, b) in pairs
    assert demo.manifest["stats"]["ddi_rate"] == pytest.approx(hits / total, abs=1e-6)
    assert 0 < hits / total < 1


def test_every_visit_has_all_three_kinds_and_ordered(demo):
    v = demo.visits
    for kind in ("diagnoses", "procedures", "drugs"):
        assert v[kind].list.len().min() >= 1
        assert (v[kind].list.len() == v[kind].list.unique().list.len()).all()  # de-duplicated
    assert all(c.startswith("icd9:") for c in demo.vocab["diagnoses"].codes)
    assert all(len(c) == 4 for c in demo.drugs.codes)
    ordered = v.sort("patient_id", "visit_index")
    check = ordered.group_by("patient_id", maintain_order=True).agg(
        (pl.col("visit_index") == pl.int_range(pl.len())).all().alias("dense"),
        pl.col("admittime").is_sorted().alias("by_time"),
    )
    assert check["dense"].all() and check["by_time"].all()
    assert v["hadm_id"].is_unique().all()


def test_profile_columns_and_vocab(demo):
    v = demo.visits
    assert demo.manifest["profile_fields"] == list(PROFILE_FIELDS)
    for f in list(PROFILE_FIELDS):
        assert f in v.columns
    text = [f for f in list(PROFILE_FIELDS) if f != "age"]
    assert v.select(pl.any_horizontal(pl.col(text).is_null())).to_series().sum() == 0
    assert (v["language"] == UNKNOWN).any()  # the demo leaves some languages empty
    assert v["age"].max() == 90 and v["age"].min() >= 0  # >89 shifted ages capped at 90
    train = v.filter(pl.col("split") == "train")
    for f in list(PROFILE_FIELDS):
        values = train[f].to_list()
        if f == "age":
            values = [age_bucket(a) for a in values]
        assert set(demo.profile_vocab[f]) == set(values) | {UNKNOWN}
        assert demo.profile_vocab[f][0] == UNKNOWN


def test_titles(demo):
    dx = demo.vocab["diagnoses"]
    assert dx.title("icd9:4019") == "Unspecified essential hypertension"
    titled = sum(t != c for c, t in zip(dx.codes, dx.titles, strict=True))
    assert titled == len(dx) - demo.manifest["titles_missing"]["diagnoses"]
    assert demo.drugs.title("N02B") == "other analgesics and antipyretics"


def test_split_by_patient(demo):
    v = demo.visits
    per_patient = v.group_by("patient_id").agg(pl.col("split").n_unique())
    assert (per_patient["split"] == 1).all()
    n = v["patient_id"].n_unique()
    sizes = dict(v.group_by("split").agg(pl.col("patient_id").n_unique()).iter_rows())
    assert set(sizes) == {"train", "val", "test"} and sum(sizes.values()) == n
    assert sizes["train"] == round(0.8 * n) and sizes["val"] == round(0.9 * n) - round(0.8 * n)
    assert demo.manifest["splits"] == sizes


def test_seed_reproducible_and_seed_matters(tmp_path, demo):
    again = prepare("mimic3", "demo", tmp_path / "again")
    assert pl.read_parquet(tmp_path / "again" / "visits.parquet").equals(demo.visits)
    assert again["outputs"]["visits.parquet"] == demo.manifest["outputs"]["visits.parquet"]
    other = prepare("mimic3", "demo", tmp_path / "other", PrepareConfig(seed=7))
    split_of = pl.read_parquet(tmp_path / "other" / "visits.parquet").select("hadm_id", "split")
    joined = demo.visits.select("hadm_id", "split").join(split_of, on="hadm_id")
    assert not (joined["split"] == joined["split_right"]).all()
    assert other["stats"] == demo.manifest["stats"]  # same cohort, other split


def test_manifest_fields_and_input_hashes(demo):
    m = demo.manifest
    for key in ("source", "config", "inputs", "mapping", "drops", "stats", "profile_fields",
                "resources", "ddi", "outputs", "versions"):
        assert key in m
    assert m["kind"] == "leader-data" and m["source"] == "mimic3"
    assert m["config"] == PrepareConfig().to_json()
    assert set(m["inputs"]) == set(DEMO_TABLES)
    for name, digest in m["inputs"].items():
        assert digest == sha256_file(demo_root() / name)
    mapping = m["mapping"]
    routes = ("ndc", "gsn", "name", "unmapped", "no_ndc")
    assert sum(mapping[r] for r in routes) == mapping["prescription_rows"] == 10398
    assert mapping["ndc"] > mapping["gsn"] > mapping["name"] > 0
    assert m["drops"]["prescription_rows_unmapped"] == mapping["unmapped"]
    assert m["drops"]["prescription_rows_ndc_zero_or_empty"] == mapping["no_ndc"] == 1478
    kept = m["stats"]["visits"]
    lost = sum(m["drops"][f"visits_without_{k}"] for k in ("diagnoses", "procedures", "drugs"))
    assert kept + lost == m["admissions_read"] == 129


def test_min_visits_drops_single_visit_patients(tmp_path, demo):
    m = prepare("mimic3", "demo", tmp_path / "mv", PrepareConfig(min_visits=2))
    v = pl.read_parquet(tmp_path / "mv" / "visits.parquet")
    assert v.group_by("patient_id").len()["len"].min() >= 2
    assert m["stats"]["single_visit_patients"] == 0
    base = demo.manifest["stats"]
    assert m["drops"]["patients_below_min_visits"] == base["single_visit_patients"]
    assert m["stats"]["visits"] == base["visits"] - base["single_visit_patients"]


def test_top_k_cuts(tmp_path, demo):
    m = prepare(
        "mimic3", "demo", tmp_path / "top",
        PrepareConfig(top_drugs=20, top_diagnoses=100, top_procedures=30),
    )
    ds = Dataset.load(tmp_path / "top")
    assert len(ds.drugs) <= 20 and len(ds.vocab["diagnoses"]) <= 100
    assert len(ds.vocab["procedures"]) <= 30
    # the kept drugs are the most frequent classes of the uncut cohort's raw admissions
    assert set(ds.drugs.codes) <= set(demo.drugs.codes)
    assert m["drops"]["drugs_codes_outside_top_20"] == len(demo.drugs) - 20
    assert m["stats"]["visits"] <= demo.manifest["stats"]["visits"]
    for kind, k in (("drugs", 20), ("diagnoses", 100), ("procedures", 30)):
        assert ds.visits[kind].explode().n_unique() <= k


def test_keep_ndc_zero_maps_more_rows(tmp_path, demo):
    m = prepare("mimic3", "demo", tmp_path / "k", PrepareConfig(drop_ndc_zero=False))
    assert m["mapping"]["no_ndc"] == 0
    assert m["mapping"]["unmapped"] > demo.manifest["mapping"]["unmapped"]
    assert m["stats"]["drugs_per_visit"] >= demo.manifest["stats"]["drugs_per_visit"]


def test_upper_case_headers_and_gzip(tmp_path, demo):
    """The full MIMIC-III release: upper-case headers, often gzip-compressed."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, name in enumerate(DEMO_TABLES):
        lines = (demo_root() / name).read_text().splitlines(keepends=True)
        lines[0] = lines[0].upper()
        if i % 2:
            with gzip.open(raw / f"{name}.gz", "wt") as f:
                f.writelines(lines)
        else:
            (raw / name).write_text("".join(lines))
    m = prepare("mimic3", raw, tmp_path / "out")
    assert m["stats"] == demo.manifest["stats"]
    assert pl.read_parquet(tmp_path / "out" / "visits.parquet").equals(demo.visits)


def test_demo_root_is_the_bundled_demo():
    root = demo_root()
    for name in DEMO_TABLES:
        assert (root / name).is_file()
    assert (root / "LICENSE.txt").is_file() and (root / "SOURCES.md").is_file()


def test_patient_fraction_samples_patients_with_the_seed(tmp_path, demo):
    m = prepare("mimic3", "demo", tmp_path / "half", PrepareConfig(patient_fraction=0.5))
    prepare("mimic3", "demo", tmp_path / "again", PrepareConfig(patient_fraction=0.5))
    prepare(
        "mimic3", "demo", tmp_path / "other", PrepareConfig(patient_fraction=0.5, seed=7)
    )
    ids = [
        set(pl.read_parquet(tmp_path / d / "visits.parquet")["patient_id"])
        for d in ("half", "again", "other")
    ]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    assert ids[0] <= set(demo.visits["patient_id"])
    assert m["drops"]["patients_not_sampled"] == 50  # of the demo's 100 patients
    assert m["config"]["patient_fraction"] == 0.5


def test_patient_fraction_out_of_range_is_refused(tmp_path):
    from leader.errors import LeaderError

    with pytest.raises(LeaderError, match="^patient_fraction: 0: expected a share"):
        prepare("mimic3", "demo", tmp_path / "x", PrepareConfig(patient_fraction=0))
    assert not (tmp_path / "x").exists()
