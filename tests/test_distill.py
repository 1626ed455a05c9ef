"""Distillation: the loss terms by hand, the pull towards the teacher, ablations, the CLI."""

import json
import math
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import make_tiny_dataset

from leader.data.dataset import Dataset
from leader.distill import bce_loss, feature_loss, info_nce
from leader.errors import LeaderError
from leader.features import FeatureTable
from leader.models.student import DistillTask, Student, StudentConfig
from leader.pipelines import export_features, fit_model

# --- the loss terms by hand --------------------------------------------------------------------


def test_bce_and_feature_loss_by_hand():
    assert bce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(
        math.log(2)
    )
    projected = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    assert feature_loss(projected, teacher).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_info_nce_by_hand_symmetric_and_minimal_when_aligned():
    eye = torch.eye(2)
    # cosine logits = identity / 1; each row: -log(e / (e + 1)) = log(1 + e^-1)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.5], [0.3, 1.0], [1.0, 3.0]])
    assert info_nce(a, b, 0.5).item() == pytest.approx(info_nce(b, a, 0.5).item())
    # not symmetric in general: the a→b and b→a terms differ, their mean is what we use
    logits = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    labels = torch.arange(3)
    expected = (
        torch.nn.functional.cross_entropy(logits / 0.5, labels)
        + torch.nn.functional.cross_entropy(logits.T / 0.5, labels)
    ) / 2
    assert info_nce(a, b, 0.5).item() == pytest.approx(expected.item())
    aligned = torch.eye(3)
    assert info_nce(aligned, aligned, 0.1) < info_nce(aligned, aligned[[1, 2, 0]], 0.1)
    assert info_nce(aligned, aligned, 0.1) < info_nce(aligned, torch.randn(3, 3), 0.1)


def test_info_nce_skips_rows_without_target():
    a, b = torch.eye(3), torch.eye(3)
    only = info_nce(a, b, 1.0, valid=torch.tensor([True, False, True]))
    assert only.item() == pytest.approx(info_nce(a[[0, 2]], b[[0, 2]], 1.0).item())
    assert info_nce(a, b, 1.0, valid=torch.tensor([True, False, False])).item() == 0.0


def test_drug_set_encoding_uses_the_collate_indices(tiny_data):
    """The reference code's alignment is off by one; ours encodes the very drugs prescribed."""
    student = Student(tiny_data.schema)
    student.build()
    by_id = {s.sample_id: s for s in tiny_data.samples("train")}
    # pairs (visit t, visit t+1): the target of t is the shifted drug record of t+1's current visit
    pairs = [
        (s, by_id[f"{s.patient_id}/{len(s.visits)}"])
        for s in by_id.values()
        if f"{s.patient_id}/{len(s.visits)}" in by_id
    ][:8]
    assert len(pairs) >= 3
    with torch.no_grad():
        by_target = student.module.encode_drug_set(
            student.encoder.collate([a for a, _ in pairs]).target
        )
        shifted = student.encoder.collate([b for _, b in pairs]).prev_drugs[:, -1]
        direct = student.module.sets["drugs"](shifted)
    torch.testing.assert_close(by_target, direct, rtol=1e-5, atol=1e-5)
    # and an off-by-one index (the reference code's bug) would give something else
    n = len(tiny_data.drugs)
    wrong = student.module.sets["drugs"](torch.where(shifted > 0, shifted % n + 1, 0))
    assert (wrong - direct).abs().max() > 1e-3


# --- distillation pulls the feature towards the teacher ----------------------------------------


def random_features(samples, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FeatureTable(
        [s.sample_id for s in samples], torch.randn(len(samples), size, generator=g)
    )


def teacher_mse(task, table, samples):
    module = task.module
    module.eval()
    with torch.no_grad():
        out = module(task.student.encoder.collate(samples))
        return feature_loss(out["projected"], table(samples)).item()


def run_steps(data, alpha, steps=40):
    train = data.samples("train")
    table = random_features(train)
    torch.manual_seed(0)
    student = Student(data.schema, {"alpha": alpha, "beta": 0.0})
    student.build()
    task = DistillTask(student, teacher=table)
    opt = torch.optim.Adam(task.module.parameters(), lr=3e-3)
    before = teacher_mse(task, table, train)
    task.module.train()
    g = np.random.default_rng(0)
    for _ in range(steps):
        idx = g.choice(len(train), 16, replace=False)
        loss, logs = task.loss(task.module, task.collate([train[i] for i in idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ("mse" in logs) == (alpha > 0) and "align" not in logs
    return before, teacher_mse(task, table, train)


def test_distillation_pulls_student_feature_towards_teacher(tiny_data):
    before0, after0 = run_steps(tiny_data, alpha=0.0)
    before1, after1 = run_steps(tiny_data, alpha=1.0)
    assert before0 == pytest.approx(before1)  # same start
    assert after1 < 0.8 * before1
    assert (before1 - after1) > 2 * (before0 - after0)


def test_feature_table_aligns_by_sample_id(tiny_data):
    train = tiny_data.samples("train")
    table = random_features(train)
    shuffled = FeatureTable(
        [train[i].sample_id for i in reversed(range(len(train)))], table.hidden.flip(0)
    )
    torch.testing.assert_close(shuffled(train[:5]), table(train[:5]))
    partial = FeatureTable([s.sample_id for s in train[:-1]], table.hidden[:-1])
    with pytest.raises(LeaderError, match="no teacher features for 1 of"):
        partial.check_covers(train, "features")
    assert not partial.covers(train[-2:]) and partial.covers(train[:2])


# --- ablation flags ----------------------------------------------------------------------------


def test_option_defaults_follow_the_data_source():
    iii = StudentConfig().resolved("mimic3")
    assert (iii.alpha, iii.beta) == (0.4, 0.005)
    iv = StudentConfig().resolved("mimic4")
    assert (iv.alpha, iv.beta) == (0.8, 0.01)
    assert StudentConfig(alpha=0, beta=0).resolved("mimic4").alpha == 0.0
    assert StudentConfig(use_profile=False).resolved("mimic3").beta == 0.0
    with pytest.raises(LeaderError, match="^beta: profile alignment needs the profile"):
        StudentConfig(beta=0.1, use_profile=False)
    with pytest.raises(LeaderError, match="^alpha: expected a number >= 0"):
        StudentConfig(alpha=-1)


def test_ablation_tasks_compute_only_their_terms(tiny_data):
    train = tiny_data.samples("train")[:12]
    table = random_features(tiny_data.samples("train"))

    def logs(alpha, beta, teacher, **config):
        torch.manual_seed(0)
        student = Student(tiny_data.schema, {"alpha": alpha, "beta": beta, **config})
        task = DistillTask(student, teacher=teacher)
        task.module.train()
        loss, out = task.loss(task.module, task.collate(train))
        assert torch.isfinite(loss)
        return task, out

    task, out = logs(0.0, 0.0, None)
    assert set(out) == {"bce"} and task.module.projector is None
    task, out = logs(0.5, 0.01, table)
    assert set(out) == {"bce", "mse", "align"}
    task, out = logs(0.0, 0.0, None, use_profile=False)
    assert set(out) == {"bce"} and not task.module.student.use_profile
    with pytest.raises(LeaderError, match="teacher"):
        DistillTask(Student(tiny_data.schema, {"alpha": 0.4}), teacher=None)
    with pytest.raises(LeaderError, match="^alpha: feature distillation .* needs the teacher"):
        Student(tiny_data.schema, {"alpha": 0.4}).fit(tiny_data)


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tiny_data_dir, tmp_path_factory):
    """A real (tiny random Llama) teacher with exported features: the path users take."""
    out = tmp_path_factory.mktemp("t") / "teacher"
    config = {"llm": "tiny", "max_length": 256, "train": {"max_steps": 2, "batch_size": 8}}
    fit_model("teacher", tiny_data_dir, out, config, progress=False)
    export_features(out, tiny_data_dir, batch_size=32)
    metrics = json.loads((out / "metrics.json").read_text())
    return out, metrics


@dataclass
class Run:
    exit_code: int
    output: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """`leader ...` in-process through the real entry point (its error handling included)."""
    from leader.cli import main

    def run(*args) -> Run:
        monkeypatch.setattr(sys, "argv", ["leader", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return Run(exit_info.value.code or 0, captured.out + captured.err)

    return run


FAST = ("--max-steps", 6, "--batch-size", 16)


@pytest.mark.slow
def test_cli_distills_from_teacher_features(cli, tiny_data_dir, teacher_dir, tmp_path):
    teacher, teacher_metrics = teacher_dir
    out = tmp_path / "student"
    result = cli("distill", "--data", tiny_data_dir, "--teacher", teacher, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "student test" in result.output and "teacher val" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"jaccard", "f1", "prauc", "ddi_rate", "avg_meds"}
    assert metrics["val"]["n_visits"] == len(Dataset.load(tiny_data_dir).samples("val"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["distillation"]["alpha"] == 0.4 and manifest["distillation"]["teacher_hash"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("val_prauc" in r for r in log)
    assert not (tmp_path / ".student.run").exists()  # the checkpoints go once the bundle exists
    again = cli("distill", "--data", tiny_data_dir, "--teacher", teacher, "--out", out, *FAST)
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.slow
def test_cli_online_distillation_runs_the_teacher(cli, tiny_data_dir, teacher_dir, tmp_path):
    teacher, _ = teacher_dir
    out = tmp_path / "online"
    args = ("--teacher", teacher, "--out", out, "--online", "--max-steps", 3)
    result = cli("distill", "--data", tiny_data_dir, *args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["distillation"]["online"] is True


def test_cli_ablation_without_teacher(cli, tiny_data_dir, tmp_path):
    out = tmp_path / "plain"
    result = cli(
        "distill", "--data", tiny_data_dir, "--out", out, "--alpha", 0, "--no-profile", *FAST
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["use_profile"] is False
    assert manifest["config"]["alpha"] == 0.0 and manifest["config"]["beta"] == 0.0
    assert manifest["distillation"] == {
        "alpha": 0.0,
        "beta": 0.0,
        "online": False,
        "loss": "mse",
        "standardized": True,
        "teacher": None,
        "teacher_hash": None,
    }


def assert_refused(result, tmp_path, *names):
    assert result.exit_code == 2, result.output
    for name in names:
        assert name in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_cli_alpha_without_teacher_exits_2(cli, tiny_data_dir, tmp_path):
    out = tmp_path / "s"
    result = cli("distill", "--data", tiny_data_dir, "--out", out, "--alpha", 0.5, *FAST)
    assert_refused(result, tmp_path, "--teacher")


def test_cli_missing_teacher_dir_exits_2(cli, tiny_data_dir, tmp_path):
    missing = tmp_path.parent / "no-such-teacher"
    result = cli("distill", "--data", tiny_data_dir, "--teacher", missing, "--out", tmp_path / "s")
    assert_refused(result, tmp_path, "no-such-teacher", "not found")


@pytest.mark.slow
def test_cli_features_from_another_dataset_exit_2(cli, teacher_dir, tmp_path_factory, tmp_path):
    other = make_tiny_dataset(tmp_path_factory.mktemp("other") / "data", seed=7)
    teacher, _ = teacher_dir
    work = tmp_path / "work"
    work.mkdir()
    result = cli("distill", "--data", other, "--teacher", teacher, "--out", work / "s", *FAST)
    assert_refused(result, work, "another dataset")


# --- distillation that can transfer ------------------------------------------------------------


def test_standardized_features_use_training_split_statistics_only(tiny_data, teacher_dir):
    from leader.features import load_features

    out, _ = teacher_dir
    table = FeatureTable.load(out, tiny_data, standardize=True)
    _, train_hidden, _ = load_features(out, tiny_data, "train")
    _, val_hidden, _ = load_features(out, tiny_data, "val")
    torch.testing.assert_close(table.mean, train_hidden.float().mean(0))
    torch.testing.assert_close(table.std, train_hidden.float().std(0, unbiased=False)
                               .clamp_min(1e-6))
    both = torch.cat([train_hidden, val_hidden]).float()
    assert not torch.allclose(table.mean, both.mean(0))  # val rows would move the statistics
    train = tiny_data.samples("train")
    got = table(train)
    torch.testing.assert_close(got.mean(0), torch.zeros(got.shape[1]), atol=1e-4, rtol=0)
    assert set(table.index) == {s.sample_id for s in train}
    raw = FeatureTable.load(out, tiny_data)
    assert raw.mean is None and torch.allclose(raw(train), train_hidden.float())


def test_cosine_feature_loss_and_summed_projected_alignment(tiny_data):
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert feature_loss(a, a * 3, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(a, -a, "cosine").item() == pytest.approx(2.0)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert info_nce(x, y, 1.0, summed=True).item() == pytest.approx(
        2 * info_nce(x, y, 1.0).item(), rel=1e-5)
    table = random_features(tiny_data.samples("train"))
    reference = Student(tiny_data.schema, {"preset": "reference", "alpha": 0.5, "beta": 0.01,
                                           "distill_loss": "cosine"})
    task = DistillTask(reference, teacher=table)
    cfg = task.cfg
    assert cfg.align_temperature == 1.0 and cfg.align_sum and cfg.distill_loss == "cosine"
    assert task.module.align_profile.out_features == 64
    assert task.module.align_target.out_features == 64
    no_proj = Student(tiny_data.schema, {"align_projection": 0, "alpha": 0.0, "beta": 0.01})
    assert isinstance(DistillTask(no_proj).module.align_profile, torch.nn.Identity)
    with pytest.raises(LeaderError, match="distill_loss: expected one of mse, cosine"):
        StudentConfig(distill_loss="l1")
