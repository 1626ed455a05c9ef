"""Feature export for distillation: content, resume after a kill, and the teacher/data checks."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import make_tiny_dataset
from helpers import dead_pid
from typer.testing import CliRunner

from leader.cli import _register, app
from leader.data.dataset import SPLITS, Dataset
from leader.errors import LeaderError
from leader.features import FEATURES, load_features
from leader.pipelines import export_features, fit_model

_register()
runner = CliRunner()
CFG = {"llm": "tiny", "max_length": 256, "train": {"batch_size": 8, "max_steps": 2}}


@pytest.fixture(scope="module")
def teacher_dir(small_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    fit_model("teacher", small_dir, out, CFG, progress=False, export=False)  # export tested here
    return out


def test_export_and_load(teacher_dir, small):
    index = export_features(teacher_dir, small, batch_size=16, shard_size=16)
    assert index["computed"] == len(small.samples())
    from leader.bundle import load

    rec = load(teacher_dir)  # features/ does not break the bundle's checksums
    for split in SPLITS:
        samples = small.samples(split)
        ids, hidden, logits = load_features(teacher_dir, small, split)
        assert ids == [s.sample_id for s in samples]
        assert hidden.shape == (len(samples), 32) and hidden.dtype == torch.float32
        assert logits.shape == (len(samples), len(small.drugs))
    ids, _, logits = load_features(teacher_dir, small.root, "test")
    probs = rec.predict_proba(small.samples("test"))
    torch.testing.assert_close(torch.sigmoid(logits), torch.from_numpy(probs), atol=1e-5, rtol=0)


class _Kill(Exception):
    pass


def test_export_resumes_after_kill(teacher_dir, small):
    shutil.rmtree(teacher_dir / FEATURES, ignore_errors=True)
    seen = []

    def kill_midway(n: int) -> None:
        seen.append(n)
        if sum(seen) > 20:
            raise _Kill

    with pytest.raises(_Kill):
        export_features(teacher_dir, small, batch_size=4, shard_size=8,
                        on_progress=kill_midway)
    shards = sorted(p.name for p in (teacher_dir / FEATURES).glob("*.safetensors"))
    assert shards == ["train-00000.safetensors", "train-00001.safetensors"]
    assert not list((teacher_dir / FEATURES).glob("*tmp*"))
    with pytest.raises(LeaderError, match="no exported features"):
        load_features(teacher_dir, small, "train")  # no index until the export finished
    index = export_features(teacher_dir, small, batch_size=4, shard_size=8)
    assert index["reused"] == 16 and index["computed"] == len(small.samples()) - 16
    assert len(load_features(teacher_dir, small, "train")[0]) == len(
        small.samples("train")
    )


def test_refuses_other_dataset(teacher_dir, small, tmp_path):
    export_features(teacher_dir, small)
    other = Dataset.load(make_tiny_dataset(tmp_path / "other", seed=7))
    with pytest.raises(LeaderError, match="another dataset"):
        load_features(teacher_dir, other, "train")


def test_refuses_other_teacher(teacher_dir, small, small_dir, tmp_path):
    export_features(teacher_dir, small)
    other = tmp_path / "other-teacher"
    cfg = {**CFG, "train": {**CFG["train"], "seed": 3}}
    fit_model("teacher", small_dir, other, cfg, progress=False, export=False)
    shutil.copytree(teacher_dir / FEATURES, other / FEATURES)
    with pytest.raises(LeaderError, match="another teacher"):
        load_features(other, small, "train")


def test_damaged_shard_is_refused_then_redone(teacher_dir, small):
    export_features(teacher_dir, small, shard_size=4)
    shard = teacher_dir / FEATURES / "val-00000.safetensors"
    shard.write_bytes(b"garbage")
    with pytest.raises(LeaderError, match="val-00000.safetensors: missing, damaged"):
        load_features(teacher_dir, small, "val")
    index = export_features(teacher_dir, small, shard_size=4)
    assert index["computed"] == min(4, len(small.samples("val")))
    assert len(load_features(teacher_dir, small, "val")[0]) == len(small.samples("val"))


def test_export_cli(teacher_dir, small_dir, tmp_path):
    result = runner.invoke(
        app, ["export-features", "--teacher", str(teacher_dir), "--data", str(small_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "features in" in result.output
    bad = runner.invoke(
        app, ["export-features", "--teacher", str(small_dir), "--data", str(small_dir)]
    )
    assert isinstance(bad.exception, LeaderError) and "not a teacher directory" in str(
        bad.exception
    )
    other = make_tiny_dataset(tmp_path / "d2", seed=5)
    vocab = (other / "vocab.json").read_text().replace("C03A", "C09A")
    (other / "vocab.json").write_text(vocab)
    mismatch = runner.invoke(
        app, ["export-features", "--teacher", str(teacher_dir), "--data", str(other)]
    )
    assert isinstance(mismatch.exception, LeaderError)
    assert "drug vocabulary differs" in str(mismatch.exception)


def test_export_removes_what_a_killed_export_left(teacher_dir, small):
    """A kill between writing a temporary file and renaming it leaves that file; the next export
    removes it (a live writer's is left alone), also when the features were already complete."""
    export_features(teacher_dir, small)
    out = teacher_dir / FEATURES
    dead, live = dead_pid(), os.getppid()
    left = [out / f".index.json.tmp-{dead}", out / f".train-00000.safetensors.tmp-{dead}"]
    for path in left:
        path.write_bytes(b"half")
    running = out / f".val-00000.safetensors.tmp-{live}"
    running.write_bytes(b"being written")
    index = export_features(teacher_dir, small)
    assert index["computed"] == 0
    assert not any(p.exists() for p in left) and running.exists()
    running.unlink()
