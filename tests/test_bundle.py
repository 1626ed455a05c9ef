import json

import numpy as np
import pytest

import leader
import leader.bundle as bundle
from leader.errors import LeaderError
from leader.models.base import model_class


@pytest.fixture(scope="module")
def popular_dir(tiny_data, tmp_path_factory):
    model = model_class("popular")(tiny_data.schema).fit(tiny_data)
    out = tmp_path_factory.mktemp("b") / "popular"
    bundle.save_bundle(model, out, metrics={"test": {"jaccard": 0.1}})
    return out


def test_roundtrip_identical_predictions(tiny_data, popular_dir):
    samples = tiny_data.samples("test")
    fresh = model_class("popular")(tiny_data.schema).fit(tiny_data)
    loaded = bundle.load(popular_dir)
    np.testing.assert_array_equal(loaded.predict_proba(samples), fresh.predict_proba(samples))
    assert "not a prescriber" in (popular_dir / "README.md").read_text()


def test_refuses_overwrite(tiny_data, popular_dir):
    model = model_class("popular")(tiny_data.schema).fit(tiny_data)
    with pytest.raises(LeaderError, match="--force"):
        bundle.save_bundle(model, popular_dir)


def test_refuses_damaged_bundle(popular_dir, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(popular_dir, damaged)
    with open(damaged / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(LeaderError, match="checksum"):
        bundle.load(damaged)
    (damaged / "weights.safetensors").unlink()
    with pytest.raises(LeaderError, match="missing"):
        bundle.load(damaged)


def test_refuses_newer_format(popular_dir, tmp_path):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(popular_dir, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LeaderError, match="format_version"):
        bundle.load(newer)


def test_recommend_first_visit_patient_and_unknown_codes(tiny_data, popular_dir):
    rec = leader.load(popular_dir)
    dx = tiny_data.vocab["diagnoses"].codes[0]
    out = rec.recommend(
        {
            "profile": {"gender": "F"},
            "visits": [{"diagnoses": [dx, "icd9:99999"], "procedures": []}],
        }
    )
    assert len(out["ranked"]) == len(tiny_data.drugs)
    probs = [d["probability"] for d in out["ranked"]]
    assert probs == sorted(probs, reverse=True)
    assert any("icd9:99999" in w for w in out["warnings"])
    top2 = rec.recommend({"visits": [{"diagnoses": [dx]}]}, top_k=2)
    assert len(top2["recommended"]) == 2


def test_repeat_last_repeats(tiny_data, tmp_path):
    model = model_class("repeat-last")(tiny_data.schema).fit(tiny_data)
    s = next(s for s in tiny_data.samples("train") if len(s.visits) > 1)
    probs = model.predict_proba([s])[0]
    for code in s.visits[-2].drugs:
        assert probs[tiny_data.drugs.index[code]] == 1.0
