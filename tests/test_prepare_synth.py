"""`leader prepare` on `leader synth` output of both formats: the planted drugs come back."""

from __future__ import annotations

import polars as pl
import pytest

from leader.data.cohort import prepare
from leader.data.dataset import Dataset
from leader.data.synth import synthesize


@pytest.fixture(scope="module", params=["mimic3", "mimic4"])
def prepared(request, tmp_path_factory):
    fmt = request.param
    base = tmp_path_factory.mktemp(f"synth-{fmt}")
    synthesize(base / "raw", fmt, patients=300, seed=1)
    manifest = prepare(fmt, base / "raw", base / "data")
    return fmt, base, manifest, Dataset.load(base / "data")


@pytest.mark.slow
def test_prepare_runs_on_synth(prepared):
    fmt, _, m, ds = prepared
    v = ds.visits
    assert m["source"] == fmt
    assert m["stats"]["patients"] == v["patient_id"].n_unique() > 100
    assert m["stats"]["visits"] == v.height and m["stats"]["single_visit_patients"] > 0
    for route in ("ndc", "gsn", "name", "unmapped", "no_ndc"):
        assert m["mapping"][route] > 0, route
    versions = {c.split(":")[0] for c in ds.vocab["diagnoses"].codes}
    assert versions == ({"icd9"} if fmt == "mimic3" else {"icd9", "icd10"})
    assert (v.group_by("patient_id").agg(pl.col("split").n_unique())["split"] == 1).all()


@pytest.mark.slow
def test_planted_drugs_are_recovered(prepared):
    """The generator's drawn classes (level-3 ones) are what prepare maps the rows back to."""
    _, base, _, ds = prepared
    truth = pl.read_parquet(base / "raw" / "ground_truth.parquet").select(
        "hadm_id",
        pl.col("drugs").list.eval(pl.element().filter(pl.element().str.len_chars() == 4))
        .list.sort().alias("truth"),
    )
    joined = ds.visits.select("hadm_id", pl.col("drugs").list.sort()).join(
        truth, on="hadm_id", how="left"
    )
    assert joined["truth"].null_count() == 0  # every kept visit is a generated admission
    agree = (joined["drugs"] == joined["truth"]).mean()
    assert agree > 0.95, agree
