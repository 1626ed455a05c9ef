"""EVAL.json layout, groups, threshold rule, and the CLI's refusals of bad input."""

import json
import shutil

import polars as pl
import pytest
from typer.testing import CliRunner

import leader
from leader.artifacts import atomic_dir
from leader.bundle import save_bundle
from leader.data.dataset import Dataset, write_dataset
from leader.errors import LeaderError
from leader.evaluation import evaluate
from leader.models.base import model_class


@pytest.fixture(scope="module")
def bundles(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in ("popular", "repeat-last"):
        out[name] = save_bundle(model_class(name)(tiny_data.schema).fit(tiny_data), root / name)
    return out


@pytest.fixture()
def cli():
    import leader.cli

    leader.cli._register()
    runner = CliRunner()
    return lambda *args: runner.invoke(leader.cli.app, [str(a) for a in args])


def test_layout_and_groups(bundles, tiny_data):
    r = evaluate(bundles["repeat-last"], tiny_data, rounds=5, seed=1)
    assert set(r) == {"protocol", "metrics", "groups", "model", "data"}
    p = r["protocol"]
    assert (p["split"], p["rounds"], p["frac"], p["seed"]) == ("test", 5, 0.8, 1)
    assert p["with_replacement"] is True and p["threshold"] == 0.5
    assert "0.5" in p["threshold_rule"] and "jaccard_f1_both_empty" in p["conventions"]
    for m in ("jaccard", "prauc", "f1", "ddi_rate", "avg_meds"):
        assert set(r["metrics"][m]) == {"mean", "std", "ci95"} and len(r["metrics"][m]["ci95"]) == 2
    g, n = r["groups"], r["data"]["n_visits"]
    assert n == len(tiny_data.samples("test"))
    assert g["first_visit"]["n_visits"] + g["returning"]["n_visits"] == n
    assert sum(b["n_visits"] for b in g["by_visits"].values()) == n
    assert set(g["by_visits"]) == {"1", "2", "3+"}
    assert g["first_visit"]["n_visits"] == g["by_visits"]["1"]["n_visits"]
    assert r["model"]["name"] == "repeat-last" and len(r["model"]["manifest_sha256"]) == 64
    assert r["model"]["inference_ms_per_visit"] > 0
    assert r["data"]["same_cohort_as_model"] is True
    json.dumps(r)  # plain JSON


def test_same_seed_same_draws_for_every_model(bundles, tiny_data):
    a = evaluate(bundles["popular"], tiny_data, seed=7)
    b = evaluate(bundles["popular"], tiny_data, seed=7)
    c = evaluate(bundles["popular"], tiny_data, seed=8)
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["prauc"] != c["metrics"]["prauc"]
    # popular gives everyone the same scores; on first visits repeat-last is popular
    rl = evaluate(bundles["repeat-last"], tiny_data, seed=7)
    assert rl["groups"]["first_visit"]["metrics"] == a["groups"]["first_visit"]["metrics"]


def test_threshold_rules(bundles, tiny_data):
    tuned = evaluate(bundles["popular"], tiny_data, tune_threshold=True)
    assert "tuned on the val split" in tuned["protocol"]["threshold_rule"]
    assert 0.05 <= tuned["protocol"]["threshold"] <= 0.95
    assert tuned["protocol"]["tuning"]["val_visits"] == len(tiny_data.samples("val"))
    # popular at 0.5 predicts nothing on this cohort; a tuned threshold predicts something
    assert tuned["metrics"]["avg_meds"]["mean"] > 0
    fixed = evaluate(bundles["popular"], tiny_data, threshold=0.2)
    assert fixed["protocol"]["threshold"] == 0.2
    with pytest.raises(LeaderError, match="not both"):
        evaluate(bundles["popular"], tiny_data, threshold=0.2, tune_threshold=True)
    with pytest.raises(LeaderError, match="between 0 and 1"):
        evaluate(bundles["popular"], tiny_data, threshold=1.5)


def test_cli_writes_eval_json(cli, bundles, tiny_data_dir, tmp_path):
    out = tmp_path / "EVAL.json"
    res = cli("evaluate", "--model", bundles["popular"], "--data", tiny_data_dir, "--out", out,
              "--rounds", 3, "--threshold", 0.3)
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["protocol"]["rounds"] == 3 and r["protocol"]["threshold"] == 0.3
    assert "resampl" in res.output and "first" in res.output


def _no_test_split(src: Dataset, out):
    visits = src.visits.with_columns(
        pl.when(pl.col("split") == "test").then(pl.lit("train")).otherwise(pl.col("split"))
        .alias("split")
    )
    with atomic_dir(out) as tmp:
        write_dataset(tmp, visits, src.vocab, src.profile_vocab, src.ddi_pairs, "x",
                      source="fixture")
    return out


def test_cli_bad_input_exit_2(cli, bundles, tiny_data, tiny_data_dir, tmp_path):
    out = tmp_path / "EVAL.json"

    # the CLI's main() prints LeaderError; through CliRunner it surfaces as the exception
    def refuses(*args, match):
        with pytest.raises(LeaderError, match=match):
            evaluate(*args)
        res = cli("evaluate", "--model", args[0], "--data", args[1], "--out", out)
        assert res.exit_code != 0 and not out.exists()

    refuses(tmp_path / "nope", tiny_data_dir, match="directory not found")
    damaged = tmp_path / "damaged"
    shutil.copytree(bundles["popular"], damaged)
    (damaged / "weights.safetensors").write_bytes(b"garbage")
    refuses(damaged, tiny_data_dir, match="checksum")
    refuses(bundles["popular"], bundles["repeat-last"], match="expected 'leader-data'")
    empty = _no_test_split(tiny_data, tmp_path / "notest")
    refuses(bundles["popular"], empty, match="split 'test' has no visits")
    with pytest.raises(LeaderError, match="^split: expected one of"):
        evaluate(bundles["popular"], tiny_data_dir, split="nope")


def test_subprocess_exit_status_and_message(bundles, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    leader = Path(sys.executable).parent / "leader"
    res = subprocess.run([str(leader), "evaluate", "--model", str(tmp_path / "missing"),
                          "--data", str(bundles["popular"])], capture_output=True, text=True)
    assert res.returncode == 2
    assert "missing" in res.stderr and res.stderr.count("\n") == 1


def test_decide_threshold_reads_validation_never_test(tiny_data):
    """The stored rule is tuned on the val split only: the model never sees a test sample."""
    from leader.evaluation import decide_threshold
    from leader.models.baselines.popular import Popular

    model = Popular(tiny_data.schema).fit(tiny_data)
    seen: list[str] = []
    real = model.predict_proba

    def spy(samples):
        seen.extend(s.sample_id for s in samples)
        return real(samples)

    model.predict_proba = spy
    rule = decide_threshold(model, tiny_data)
    test_ids = {s.sample_id for s in tiny_data.samples("test")}
    assert seen and set(seen) == {s.sample_id for s in tiny_data.samples("val")}
    assert not test_ids & set(seen)
    assert "tuned on the val split" in rule["threshold_rule"] and rule["tuning"]["val_visits"]
    assert 0.05 <= rule["threshold"] <= 0.95
    fixed = decide_threshold(model, tiny_data, threshold=0.5, max_drugs=3)
    assert fixed["threshold"] == 0.5 and fixed["threshold_rule"] == (
        "fixed 0.5, at most 3 drugs per visit"
    )
    with pytest.raises(LeaderError, match="between 0 and 1"):
        decide_threshold(model, tiny_data, threshold=1.5)


def test_the_bundle_rule_is_used_by_default(tiny_data, tmp_path):
    from leader.bundle import save_bundle
    from leader.evaluation import decide_threshold
    from leader.models.baselines.popular import Popular

    model = Popular(tiny_data.schema).fit(tiny_data)
    rule = decide_threshold(model, tiny_data, max_drugs=2)
    out = save_bundle(model, tmp_path / "pop", rule=rule)
    rec = leader.load(out)
    assert rec.threshold == rule["threshold"] and rec.max_drugs == 2
    r = evaluate(out, tiny_data)
    assert r["protocol"]["threshold"] == rule["threshold"]
    assert rule["threshold_rule"] in r["protocol"]["threshold_rule"]
    assert r["metrics"]["avg_meds"]["mean"] <= 2
    picked = rec.recommend({"visits": [{"diagnoses": [], "procedures": []}]})
    assert len(picked["recommended"]) <= 2
