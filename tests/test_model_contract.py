"""One contract for every registered model, in the spirit of scikit-learn's ``check_estimator``:
fit through the one pipeline → probabilities of the right shape and range → the bundle loads
back with the same config and identical probabilities → it recommends → a damaged bundle is
refused. A new model joins the registry and this test covers it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import leader
from leader.data.cohort import prepare
from leader.data.dataset import Dataset
from leader.data.synth import synthesize
from leader.errors import LeaderError
from leader.models.base import MODEL_NAMES, model_class
from leader.pipelines import fit_model
from leader.recommend import Recommender

# the least training that still exercises each model's own fit (the contract, not the quality)
SETTINGS = {
    "teacher": {"llm": "tiny", "max_length": 2048, "train": {"max_steps": 2, "batch_size": 8}},
    "student": {"alpha": 0.0, "train": {"max_steps": 3}},
    "retain": {"train": {"max_steps": 3}},
    "gamenet": {"train": {"max_steps": 3}},
    "safedrug": {"train": {"max_steps": 3}},
}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """A small synthetic MIMIC-III cohort: the oracle needs generator truth, the rest any data."""
    root = tmp_path_factory.mktemp("contract")
    synthesize(root / "raw", "mimic3", patients=120, seed=3)
    prepare("mimic3", root / "raw", root / "data")
    return root / "data"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_contract(name, synth_dir, tmp_path):
    data = Dataset.load(synth_dir)
    out = tmp_path / name
    result = fit_model(name, data, out, SETTINGS.get(name), progress=False)
    samples = data.samples("test")
    assert samples, "the fixture must have test visits"

    probs = result.model.predict_proba(samples)
    assert probs.shape == (len(samples), len(data.drugs))
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert set(result.metrics) == {"val", "test"}

    loaded = leader.load(out)
    assert type(loaded.model) is model_class(name)
    assert loaded.model.config == result.model.config  # model.json round-trips the typed config
    np.testing.assert_allclose(loaded.predict_proba(samples), probs, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / f".{name}.run").exists()  # checkpoints go once the bundle exists

    current = samples[0].current
    answer = loaded.recommend({"profile": {"gender": "F", "age": 60},
                               "visits": [{"diagnoses": list(current.diagnoses),
                                           "procedures": list(current.procedures)}]})
    assert len(answer["ranked"]) == len(data.drugs)

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    saved = json.loads((out / "model.json").read_text())
    saved["config"]["nope"] = 1
    (damaged / "model.json").write_text(json.dumps(saved))
    with pytest.raises(LeaderError, match="checksum"):
        leader.load(damaged)
    with pytest.raises(LeaderError, match="unknown setting 'nope'"):  # even unchecked
        Recommender.load(damaged, verify=False)


def test_configs_refuse_unknown_and_fill_missing_settings(tiny_data):
    for name in MODEL_NAMES:
        cls = model_class(name)
        assert cls(tiny_data.schema, {}).config == cls.config_class()  # missing → defaults
        with pytest.raises(LeaderError, match="unknown setting 'nope'"):
            cls(tiny_data.schema, {"nope": 1})


def test_old_student_and_baseline_configs_still_load(tiny_data):
    """model.json of leader 0.1 (flat training keys, the student's ``training`` block)."""
    student = model_class("student")(tiny_data.schema, {
        "dim": 64, "training": {"alpha": 0.4, "beta": 0.005, "epochs": 30, "threshold": 0.5,
                                "progress": False, "online": False}})
    assert student.config.alpha == 0.4 and student.config.train.epochs == 30
    gamenet = model_class("gamenet")(tiny_data.schema, {"dim": 32, "train": {"epochs": 5}})
    assert gamenet.config.dim == 32 and gamenet.config.train.lr == 2e-4  # the model's own default
    flat = model_class("retain")(tiny_data.schema, {"dim": 16, "epochs": 3, "lr": 0.01})
    assert (flat.config.dim, flat.config.train.epochs, flat.config.train.lr) == (16, 3, 0.01)
