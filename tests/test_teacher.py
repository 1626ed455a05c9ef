"""The teacher: pooling, training, resume, save/load, 2-process DDP and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leader.bundle import load
from leader.cli import _register, app
from leader.data.dataset import Dataset
from leader.errors import LeaderError
from leader.features import load_features
from leader.models import fast_paths
from leader.models.teacher import Teacher, last_token_index
from leader.pipelines import fit_model, run_dir_for
from leader.train import FitContext

_register()
runner = CliRunner()
BIN = Path(sys.executable).parent
FAST = {"llm": "tiny", "max_length": 256, "train": {"batch_size": 8, "lr": 1e-2}}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Fewer patients than ``small``: the LLM path is the slow part on a shared CPU."""
    from conftest import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "small", patients=30)


@pytest.fixture(scope="module")
def small(small_dir):
    return Dataset.load(small_dir)


def _config(**train) -> dict:
    return {**FAST, "train": {**FAST["train"], **train}}


def train_teacher(data_dir, out, config, on_step=None):
    return fit_model("teacher", data_dir, out, config, on_step=on_step)


def _weights_hash(model: Teacher) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.float().numpy().tobytes())
    return h.hexdigest()


def test_last_token_index_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_ignores_padding(small, pooling):
    model = Teacher(small.schema, {**FAST, "pooling": pooling})
    model.build()
    module = model.module.eval()
    a, b = list(range(5, 17)), list(range(40, 46))  # 12 and 6 tokens
    pad = model.tokenizer.pad_token_id

    def run(rows, masks):
        with torch.no_grad():
            return module(torch.tensor(rows), torch.tensor(masks))

    alone = [run([a], [[1] * 12]), run([b], [[1] * 6])]
    right = run([a, b + [pad] * 6], [[1] * 12, [1] * 6 + [0] * 6])
    left = run([a, [pad] * 6 + b], [[1] * 12, [0] * 6 + [1] * 6])
    for batch in (right, left):
        for i in range(2):
            for k in range(2):  # logits and pooled hidden state
                torch.testing.assert_close(batch[k][i], alone[i][k][0], atol=1e-5, rtol=1e-4)
    with torch.no_grad(), fast_paths.autocast(torch.device("cpu"), module.autocast):
        states = module.backbone(input_ids=torch.tensor([a])).last_hidden_state[0].float()
    expected = states.mean(dim=0) if pooling == "mean" else states[-1]
    torch.testing.assert_close(alone[0][1][0], expected, atol=1e-5, rtol=1e-4)


def test_training_lowers_loss(small):
    model = Teacher(small.schema, _config(max_steps=12, eval_every=12))
    task = model.task()
    batch = task.collate(small.samples("train")[:32])
    with torch.no_grad():
        before = float(task.loss(model.module.eval(), batch)[0])
    model.fit(small, FitContext(progress=False))
    with torch.no_grad():
        after = float(task.loss(model.module.eval(), batch)[0])
    assert after < before - 0.05, (before, after)
    assert model.fit_summary["steps"] == 12
    trainable = model.state_dict()
    assert any("lora_A" in k for k in trainable) and "drug_layer.weight" in trainable
    assert not any("embed_tokens" in k for k in trainable)  # the backbone stays frozen


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(small_dir, small, tmp_path):
    cfg = _config(max_steps=4, eval_every=2)
    whole = tmp_path / "whole"
    train_teacher(small_dir, whole, cfg)

    def stop_at_3(step: int) -> None:
        if step == 3:
            raise _Interrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        train_teacher(small_dir, resumed, cfg, on_step=stop_at_3)
    assert not resumed.exists() and (run_dir_for(resumed) / "checkpoint").is_dir()
    with pytest.raises(LeaderError, match="other options"):  # a different command is refused
        train_teacher(small_dir, resumed, _config(max_steps=5, eval_every=2))
    steps: list[int] = []
    train_teacher(small_dir, resumed, cfg, on_step=steps.append)
    assert steps == [3, 4]  # continued from the step-2 checkpoint
    assert not run_dir_for(resumed).exists()
    a, b = load(whole), load(resumed)
    assert _weights_hash(a.model) == _weights_hash(b.model)
    assert (resumed / "train_log.jsonl").is_file()


def test_bundle_roundtrip_and_manifest(small_dir, small, tmp_path):
    out = tmp_path / "teacher"
    result = train_teacher(small_dir, out, _config(max_steps=3))
    assert set(result.metrics["val"]) >= {"jaccard", "prauc", "f1", "ddi_rate", "avg_meds"}
    rec = load(out)
    assert rec.manifest["model"] == "teacher" and rec.manifest["llm"] == "tiny"
    assert json.loads((out / "model.json").read_text())["config"]["lora_r"] == 8
    assert not list(out.glob("*.pt")) and not list(out.glob("*.bin"))  # no pickle
    samples = small.samples("test")[:5]
    probs = rec.predict_proba(samples)
    assert probs.shape == (5, len(small.drugs)) and np.all((probs > 0) & (probs < 1))
    again = load(out).predict_proba(samples)
    np.testing.assert_allclose(probs, again, rtol=1e-5, atol=1e-6)


def test_mean_pooling_is_kept_by_the_bundle(small_dir, small, tmp_path):
    out = tmp_path / "teacher"
    result = train_teacher(small_dir, out, {**_config(max_steps=2), "pooling": "mean"})
    assert json.loads((out / "model.json").read_text())["config"]["pooling"] == "mean"
    rec = load(out)
    assert rec.model.module.pooling == "mean"
    samples = small.samples("test")[:4]
    np.testing.assert_allclose(rec.predict_proba(samples), result.model.predict_proba(samples),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_keep_identical_replicas(small_dir, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import hashlib, os
            from leader.data.dataset import Dataset
            from leader.models.teacher import Teacher
            from leader.train import FitContext
            data = Dataset.load({str(small_dir)!r})
            model = Teacher(data.schema, {_config(max_steps=3, eval_every=3)!r})
            model.fit(data, FitContext(progress=False))
            h = hashlib.sha256()
            for name, t in sorted(model.state_dict().items()):
                h.update(name.encode()); h.update(t.float().numpy().tobytes())
            rank = os.environ["RANK"]
            open({str(tmp_path)!r} + f"/rank{{rank}}.txt", "w").write(h.hexdigest())
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", str(script)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    # and training changed the weights (not two copies of the initial state)
    fresh = Teacher(load_schema(small_dir), _config(max_steps=3, eval_every=3))
    fresh.build()
    assert _weights_hash(fresh) != hashes[0]


@pytest.mark.slow
def test_two_processes_share_the_layer_cache_and_the_export(small_dir, tmp_path):
    """Under torchrun each rank fills every other cache shard and encodes every other sample;
    the exported features must be those of the saved teacher, in sample order."""
    out = tmp_path / "teacher"
    config = {**_config(max_steps=2, eval_every=2), "train_layers": 1}
    script = tmp_path / "ddp_export.py"
    script.write_text(
        "import leader.models.layer_cache as lc\n"
        "lc.SHARD_SIZE = 5  # several shards, so that both ranks compute some\n"
        "from leader.pipelines import fit_model\n"
        f"fit_model('teacher', {str(small_dir)!r}, {str(out)!r}, {config!r}, progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29518", str(script)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not run_dir_for(out).exists()  # rank 0 removed the run dir (and its layer cache)
    summary = json.loads((out / "manifest.json").read_text())["training"]
    assert 0 < summary["layer_cache_computed"] < len(Dataset.load(small_dir).samples("train"))
    teacher = load(out).model  # a fresh process-local teacher: whole backbone, no cache
    for split in ("train", "test"):
        ids, hidden, logits = load_features(out, small_dir, split)
        samples = Dataset.load(small_dir).samples(split)
        assert ids == [s.sample_id for s in samples]
        want_hidden, want_logits = teacher.encode(samples)
        torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)


def load_schema(data_dir):
    return Dataset.load(data_dir).schema


def _not_causal(tmp_path: Path) -> Path:
    d = tmp_path / "vit"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    return d


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--llm", "/no/such/model"], "llm: /no/such/model: no such directory"),
        (["--llm", "{empty}"], "not a Hugging Face model directory"),
        (["--llm", "{bert}"], "is not a causal language model"),
        (["--max-length", "100000"], "max_length: the model tiny takes 16 to 4096"),
        (["--dtype", "fp8"], "dtype: expected one of auto, fp32, bf16, fp16, got 'fp8'"),
    ],
)
def test_train_teacher_bad_input(small_dir, tmp_path, extra, message):
    (tmp_path / "empty").mkdir()
    bert = _not_causal(tmp_path)
    extra = [x.format(empty=tmp_path / "empty", bert=bert) for x in extra]
    if "--llm" not in extra:
        extra += ["--llm", "tiny"]
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["train-teacher", "--data", str(small_dir), "--out", str(out), *extra]
    )
    assert isinstance(result.exception, LeaderError), result.output
    assert message in str(result.exception)
    assert not out.exists() and not run_dir_for(out).exists()


def test_train_teacher_other_data_format_exits_2(tmp_path):
    other = tmp_path / "not-data"
    other.mkdir()
    (other / "visits.csv").write_text("a,b\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(BIN / "leader"), "train-teacher", "--data", str(other), "--out", str(out),
         "--llm", "tiny"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "not-data: no manifest.json; expected a leader-data directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_teacher_needs_force(small_dir, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(LeaderError, match="use --force"):
        train_teacher(small_dir, out, _config(max_steps=1))
    assert (out / "keep.txt").is_file()
