"""Calibration: fitting recovers a known miscalibration, the bundle stores and applies it, the
model card states it, and `leader compare` reports ECE before and after with a figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli

import leader
from leader import calibration as calib
from leader.bundle import save_bundle, store_calibration
from leader.errors import LeaderError
from leader.models.base import model_class
from leader.report import compare


def overconfident(n: int = 4000, classes: int = 3, seed: int = 0):
    """True probabilities q; the model reports sigmoid(3·logit(q)), a temperature of 3."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, size=(n, classes))
    y = (rng.uniform(size=q.shape) < q).astype(float)
    return 1 / (1 + np.exp(-3 * np.log(q / (1 - q)))), y, q


def test_ece_by_hand():
    probs = np.array([[0.1, 0.9], [0.1, 0.9]])
    y = np.array([[0, 1], [1, 1]])
    # bin of 0.1: mean 0.1, frequency 0.5 (2 pairs); bin of 0.9: mean 0.9, frequency 1 (2 pairs)
    assert calib.ece(probs, y, bins=10) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert calib.ece(np.array([[0.3]]), np.array([[0.3]])) == pytest.approx(0.0)


def test_temperature_recovers_known_miscalibration():
    probs, y, _ = overconfident()
    cal = calib.fit(probs, y, "temperature")
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    assert cal.fitted_on["ece_after"] < cal.fitted_on["ece_before"] / 3
    test_probs, test_y, _ = overconfident(seed=1)
    assert calib.ece(cal.apply(test_probs), test_y) < calib.ece(test_probs, test_y) / 3
    order = np.argsort(test_probs[:, 0])
    assert np.all(np.diff(cal.apply(test_probs)[order, 0]) >= 0)  # ranking kept


def test_isotonic_only_where_data_suffices():
    probs, y, _ = overconfident(n=400)
    y[:, 2] = 0
    y[:3, 2] = 1  # 3 positives: too few for its own curve
    cal = calib.fit(probs, y, "isotonic", min_count=30)
    assert set(cal.isotonic) == {0, 1}
    out = cal.apply(probs)
    assert np.all((out >= 0) & (out <= 1))
    back = calib.Calibration.from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_allclose(back.apply(probs), out)
    with pytest.raises(LeaderError, match="not a valid calibration"):
        calib.Calibration.from_json({"method": "platt"})
    with pytest.raises(LeaderError, match="expected one of"):
        calib.fit(probs, y, "platt")


def test_bundle_stores_and_applies_calibration(tiny_data, tmp_path, monkeypatch, capsys):
    model = model_class("logreg")(tiny_data.schema, {"max_iter": 50}).fit(tiny_data)
    raw_dir = save_bundle(model, tmp_path / "lr")
    assert "Not calibrated" in (raw_dir / "README.md").read_text()
    data_dir = str(tiny_data.root)
    code, out, err = run_cli(["calibrate", "--model", str(raw_dir), "--data", data_dir,
                              "--out", str(tmp_path / "cal")], monkeypatch, capsys)
    assert code == 0, err
    cal_dir = tmp_path / "cal"
    raw, cal = leader.load(raw_dir), leader.load(cal_dir)
    samples = tiny_data.samples("test")[:20]
    t = calib.read(cal_dir).temperature
    expected = calib._sigmoid(calib._logit(raw.predict_proba(samples)) / t)
    np.testing.assert_allclose(cal.predict_proba(samples), expected, rtol=1e-5, atol=1e-6)
    card = (cal_dir / "README.md").read_text()
    assert "## Calibration\ntemperature, fitted on the val split" in card
    assert json.loads((cal_dir / "manifest.json").read_text())["calibration"] == "temperature"
    # a damaged calibration file is refused like any other file
    (cal_dir / calib.CALIBRATION_FILE).write_text('{"method": "temperature", "temperature": 9}')
    with pytest.raises(LeaderError, match="checksum"):
        leader.load(cal_dir)
    # none removes it, in place
    store_calibration(raw_dir, calib.Calibration("none"))
    assert not (raw_dir / calib.CALIBRATION_FILE).exists()
    code, _, err = run_cli(["calibrate", "--model", str(raw_dir), "--data", data_dir,
                            "--calibration", "platt"], monkeypatch, capsys)
    assert code == 2 and "platt" in err


def test_compare_reports_calibration(tiny_data, tmp_path):
    dirs = [save_bundle(model_class(n)(tiny_data.schema).fit(tiny_data), tmp_path / n)
            for n in ("popular", "logreg")]
    table = compare(tiny_data, dirs, tmp_path / "report", rounds=2, calibration="isotonic")
    rows = table["calibration"]
    assert [r["model"] for r in rows] == ["popular", "logreg"]
    for r in rows:
        assert r["method"] == "isotonic" and 0 <= r["ece_after"] <= 1
        assert len(r["reliability_before"]) == calib.BINS
    assert (tmp_path / "report" / "figures" / "calibration.png").stat().st_size > 1000
    assert "## Calibration" in (tmp_path / "report" / "table.md").read_text()
    assert "ECE before" in (tmp_path / "report" / "report.html").read_text()


def test_training_commands_fit_and_state_a_calibration(tiny_data, tmp_path, monkeypatch, capsys):
    """`--calibration` on a training command: fitted on val, stored, applied on load, and the
    threshold tuned (and the metrics scored) on the calibrated probabilities."""
    from leader.evaluation import decide_threshold, split_metrics

    out = tmp_path / "lr"
    code, _, err = run_cli(["train-baseline", "logreg", "--data", str(tiny_data.root), "--out",
                            str(out), "--calibration", "isotonic"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"] == "isotonic" and manifest["threshold_tuning"]
    rec = leader.load(out)
    cal = calib.read(out)
    assert cal.method == "isotonic" and cal.fitted_on["split"] == "val"
    base = calib.uncalibrated(rec.model)
    samples = tiny_data.samples("val")
    np.testing.assert_allclose(rec.predict_proba(samples), cal.apply(base.predict_proba(samples)),
                               rtol=1e-6, atol=1e-7)
    rule = decide_threshold(rec.model, tiny_data)  # the calibrated model, tuned again
    assert manifest["threshold"] == pytest.approx(rule["threshold"])
    want = split_metrics(rec.model, tiny_data, rule["threshold"])
    assert rec.metrics["test"]["jaccard"] == pytest.approx(want["test"]["jaccard"])
    assert "isotonic, fitted on the val split" in (out / "README.md").read_text()
    code, _, err = run_cli(["train-baseline", "popular", "--data", str(tiny_data.root), "--out",
                            str(tmp_path / "p"), "--calibration", "platt"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --calibration: expected one of none,")
    assert not (tmp_path / "p").exists()


def test_calibrate_tunes_a_tuned_threshold_again(tiny_data, tmp_path, monkeypatch, capsys):
    from leader.evaluation import decide_threshold
    from leader.pipelines import fit_model

    out = fit_model("logreg", tiny_data, tmp_path / "lr", {"max_iter": 50}, progress=False).out
    code, printed, err = run_cli(["calibrate", "--model", str(out), "--data",
                                  str(tiny_data.root), "--calibration", "isotonic"],
                                 monkeypatch, capsys)
    assert code == 0, err
    after = json.loads((out / "manifest.json").read_text())
    rec = leader.load(out)
    assert after["threshold"] == pytest.approx(decide_threshold(rec.model, tiny_data)["threshold"])
    assert "tuned on the val split" in after["threshold_rule"] and "threshold" in printed
    assert rec.metrics["test"]["threshold"] == after["threshold"]
