"""`leader tune`: Optuna on validation only; a config file that distill and train-baseline read."""

import json

import pytest

from leader.data.dataset import Dataset
from leader.errors import LeaderError
from leader.tune import tune


@pytest.mark.slow
@pytest.mark.parametrize("name", ["student", "retain"])
def test_tune_on_tiny_data_within_budget_never_reads_test(name, tiny_data_dir, tmp_path,
                                                          monkeypatch):
    splits = []
    real = Dataset.samples

    def spy(self, split=None):
        splits.append(split)
        return real(self, split)

    monkeypatch.setattr(Dataset, "samples", spy)
    out = tmp_path / f"{name}.json"
    result = tune(name, tiny_data_dir, out, budget_minutes=0.5, epochs=1, trials=3)
    assert set(splits) <= {"train", "val"}  # the test split (and "all") is never read
    assert 1 <= result["trials"] <= 3 and result["seconds"] < 120
    assert 0.0 <= result["best_val_prauc"] <= 1.0
    found = json.loads(out.read_text())
    assert found["model"] == name and found["config"]["dim"] in (64, 128)
    assert set(found["config"]["train"]) == {"lr", "epochs"}
    if name == "student":
        assert found["config"]["alpha"] == 0.0 and "beta" not in found["config"]  # no teacher
    with pytest.raises(LeaderError, match="exists"):
        tune(name, tiny_data_dir, out, budget_minutes=0.1)


def test_tune_refuses_bad_requests(tiny_data_dir, tmp_path):
    with pytest.raises(LeaderError, match="expected one of"):
        tune("logreg", tiny_data_dir, tmp_path / "x.json", 1)
    with pytest.raises(LeaderError, match="minutes"):
        tune("student", tiny_data_dir, tmp_path / "x.json", 0)
    with pytest.raises(LeaderError, match="only used by the student"):
        tune("retain", tiny_data_dir, tmp_path / "x.json", 1, teacher=tmp_path)


@pytest.mark.slow
def test_distill_and_train_baseline_take_the_tuned_config(tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    import leader.cli

    leader.cli._register()
    runner = CliRunner()
    cfg = tmp_path / "student.json"
    cfg.write_text(json.dumps({"model": "student", "config": {"dim": 32, "wide": False,
                                                              "train": {"lr": 0.002}}}))
    out = tmp_path / "s"
    r = runner.invoke(leader.cli.app, ["distill", "--data", str(tiny_data_dir), "--out", str(out),
                                       "--alpha", "0", "--max-steps", "3", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["dim"] == 32 and manifest["config"]["wide"] is False
    assert manifest["config"]["train"]["lr"] == 0.002
    assert "tuned on the val split" in manifest["threshold_rule"]
    bcfg = tmp_path / "retain.json"
    bcfg.write_text(json.dumps({"model": "retain", "config": {"dim": 32, "lr": 0.001}}))
    r = runner.invoke(leader.cli.app, ["train-baseline", "retain", "--data", str(tiny_data_dir),
                                       "--out", str(tmp_path / "r"), "--max-steps", "3",
                                       "--config", str(bcfg), "--threshold", "0.5"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["dim"] == 32 and manifest["threshold"] == 0.5
    assert manifest["threshold_rule"] == "fixed 0.5"


@pytest.mark.slow
def test_tune_command_writes_the_config(tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    import leader.cli

    leader.cli._register()
    out = tmp_path / "retain.json"
    r = CliRunner().invoke(leader.cli.app, ["tune", "retain", "--data", str(tiny_data_dir),
                                            "--budget", "0.5", "--trials", "1", "--epochs", "1",
                                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "best validation PRAUC" in r.output and json.loads(out.read_text())["trials"] == 1
