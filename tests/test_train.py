import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_tasks import LinearTask

from leader.train import FitContext, TrainConfig, epoch_order, train

sys.path.insert(0, str(Path(__file__).parent))


def ctx(run_dir=None, on_step=None) -> FitContext:
    return FitContext(run_dir, progress=False, on_step=on_step)


def cfg(**kw):
    base = dict(epochs=30, batch_size=8, lr=0.05, eval_every=5, patience=100)
    base.update(kw)
    return TrainConfig(**base)


def test_training_improves_validation_prauc(tiny_data, tmp_path):
    task = LinearTask(tiny_data)
    result = train(task, tiny_data.samples("train"), tiny_data.samples("val"), cfg(), ctx(tmp_path))
    scores = [h["val_prauc"] for h in result.history if "val_prauc" in h]
    assert result.best_score == max(scores)
    assert result.best_score > scores[0] + 0.05
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any("val_prauc" in r for r in log)


def test_early_stopping_restores_best(tiny_data):
    task = LinearTask(tiny_data)
    result = train(
        task, tiny_data.samples("train"), tiny_data.samples("val"), cfg(lr=1.0, patience=2), ctx()
    )
    assert result.stopped_early
    assert result.best_step < result.steps


def interrupted(tiny_data, tmp_path, make=LinearTask):
    """A reference run of 23 steps, and the same run killed at step 14 (checkpoint at 12)."""
    train_s, val_s = tiny_data.samples("train"), tiny_data.samples("val")
    config = cfg(max_steps=23, eval_every=4)
    ref = make(tiny_data)
    train(ref, train_s, val_s, config, ctx(tmp_path / "ref"))

    def crash(step):
        if step == 14:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(make(tiny_data), train_s, val_s, config, ctx(run, crash))
    return ref, run, lambda task: train(task, train_s, val_s, config, ctx(run))


def assert_same_weights(a, b) -> None:
    pairs = zip(a.module.state_dict().values(), b.module.state_dict().values(), strict=True)
    for x, y in pairs:
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_resume_after_interruption_gives_same_weights(tiny_data, tmp_path):
    ref, run, resume = interrupted(tiny_data, tmp_path)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 12
    resumed = LinearTask(tiny_data, seed=123)  # different init: all comes from the checkpoint
    assert resume(resumed).steps == 23
    assert_same_weights(ref, resumed)


@pytest.mark.parametrize("left", ["checkpoint.tmp", "checkpoint.old"])
def test_resume_from_a_checkpoint_caught_between_its_renames(left, tiny_data, tmp_path):
    """A kill between moving the old checkpoint aside and renaming the new one into place
    leaves only ``checkpoint.tmp`` (complete) or ``checkpoint.old``; either resumes exactly."""
    ref, run, resume = interrupted(tiny_data, tmp_path)
    (run / "checkpoint").rename(run / left)
    resumed = LinearTask(tiny_data, seed=123)
    assert resume(resumed).steps == 23
    assert_same_weights(ref, resumed)


def test_changed_options_refuse_to_resume(tiny_data, tmp_path):
    from leader.errors import LeaderError

    train_s, val_s = tiny_data.samples("train"), tiny_data.samples("val")
    train(LinearTask(tiny_data), train_s, val_s, cfg(max_steps=4), ctx(tmp_path))
    with pytest.raises(LeaderError, match="checkpoint: checkpoint was made with other training"):
        train(LinearTask(tiny_data), train_s, val_s, cfg(max_steps=4, lr=0.01), ctx(tmp_path))
    # the refusal names the checkpoint it read, also one left between its renames
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    with pytest.raises(LeaderError, match="checkpoint.old: checkpoint was made with other"):
        train(LinearTask(tiny_data), train_s, val_s, cfg(max_steps=4, lr=0.01), ctx(tmp_path))


def _edit_state(run, **changes) -> dict:
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    path.write_text(json.dumps(state))
    return state


def test_a_gpu_checkpoints_random_state_resumes_on_a_cpu():
    """A GPU run's checkpoint also holds the GPU generator's state (its dropout masks are drawn
    there); resumed on a CPU, the CPU state is restored and the GPU's left alone."""
    from leader.train import rng_state, set_rng_state

    module = torch.nn.Linear(2, 2)
    saved = rng_state(module)
    assert set(saved) == {"torch"}  # a CPU run has no GPU state to keep
    first = torch.rand(3)
    set_rng_state(module, {**saved, "cuda": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3), first)


def test_a_resume_inside_an_epoch_needs_as_many_processes(tiny_data, tmp_path):
    """Each rank's batches of an epoch depend on the process count: a run stopped inside an
    epoch by 2 processes cannot go on in 1 (it would repeat and skip samples)."""
    from leader.errors import LeaderError

    _, run, resume = interrupted(tiny_data, tmp_path)
    assert _edit_state(run)["world"] == 1 and _edit_state(run)["batch"] > 0
    _edit_state(run, world=2)
    with pytest.raises(LeaderError, match=r"run of 2 process\(es\), resumed with 1"):
        resume(LinearTask(tiny_data))
    # a checkpoint from before the count was recorded: one RNG file per process
    _edit_state(run, world=None)
    shutil.copy(run / "checkpoint" / "rng-0.safetensors", run / "checkpoint" / "rng-1.safetensors")
    with pytest.raises(LeaderError, match="resume with 2"):
        resume(LinearTask(tiny_data))
    # between epochs any count goes on: the next epoch is dealt afresh
    _edit_state(run, batch=0)
    assert resume(LinearTask(tiny_data)).steps == 23
    assert json.loads((run / "checkpoint" / "state.json").read_text())["world"] == 1


def test_epoch_order_shards_disjoint():
    a, b = epoch_order(11, 3, 2, 0, 2), epoch_order(11, 3, 2, 1, 2)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert (epoch_order(11, 3, 2) == epoch_order(11, 3, 2)).all()


DDP_SCRIPT = """
import hashlib, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch, torch.distributed as dist
from conftest import make_tiny_dataset
from leader.data.dataset import Dataset
from leader.train import FitContext, TrainConfig, train
from train_tasks import LinearTask
data = Dataset.load({data!r})
task = LinearTask(data)
train(task, data.samples("train"), data.samples("val"),
      TrainConfig(epochs=3, batch_size=4, lr=0.05), FitContext(Path({run!r}), progress=False))
rank = dist.get_rank() if dist.is_initialized() else 0
world = dist.get_world_size() if dist.is_initialized() else 1
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in task.module.state_dict().values()))
Path({run!r}, f"rank{{rank}}-of-{{world}}.txt").write_text(digest.hexdigest())
"""


@pytest.mark.slow
def test_two_process_ddp_replicas_agree(tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "ddp.py"
    script.write_text(
        DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_data_dir), run=str(run))
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(run / f"rank{r}-of-2.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]


AUTOCAST_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from leader.data.dataset import Dataset
from leader.train import FitContext, TrainConfig, train
from train_tasks import LinearTask
data = Dataset.load({data!r})
task = LinearTask(data)
seen = []
# on the inner layer: its hook runs inside the forward that accelerate would wrap in autocast
task.module[1].register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
train(task, data.samples("train"), data.samples("val"),
      TrainConfig(max_steps=2, batch_size=8, eval_every=1), FitContext(None, progress=False))
print("AUTOCAST", sorted(set(seen)))
"""


def test_an_accelerate_config_does_not_change_a_tasks_precision(tiny_data_dir, tmp_path):
    """`accelerate launch` hands its config's mixed precision to every process through the
    environment; under plain DDP it must not wrap a task's forward in autocast (the teacher's
    drug layer and the student stay fp32). A fresh interpreter: accelerate's state is global."""
    script = tmp_path / "autocast.py"
    script.write_text(AUTOCAST_SCRIPT.format(tests=str(Path(__file__).parent),
                                             data=str(tiny_data_dir)))
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AUTOCAST [False]" in proc.stdout, proc.stdout[-2000:]


class HalfTask(LinearTask):
    """The linear task with its gradient flowing back through fp16 (as through an fp16
    backbone), the loss multiplied by ``gain`` to push that gradient out of fp16's range."""

    def __init__(self, data, gain: float, loss_scaling: bool = True):
        super().__init__(data)
        self.gain, self.loss_scaling = gain, loss_scaling

    def loss(self, module, batch):
        logits = module(batch["x"]).half().float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])
        return self.gain * bce, {}


def weights_after(task, data, run_dir=None, **kw):
    before = [p.detach().clone() for p in task.module.parameters()]
    train(task, data.samples("train"), data.samples("val"), cfg(max_steps=6, **kw),
          ctx(run_dir))
    return before, list(task.module.parameters())


def test_loss_scaling_keeps_fp16_gradients_from_underflowing(tiny_data):
    """At gain 1e-6 the fp16 gradient is below fp16's smallest number: unscaled it is zero
    and nothing trains; scaled (fp16 tasks) it survives and the weights move."""
    before, after = weights_after(HalfTask(tiny_data, 1e-6, loss_scaling=False), tiny_data)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    before, after = weights_after(HalfTask(tiny_data, 1e-6), tiny_data)
    assert not torch.equal(before[-1], after[-1])


def test_loss_scaling_skips_overflowing_steps_and_lowers_the_scale(tiny_data, tmp_path):
    """At gain 1e6 the scaled fp16 gradient overflows: those steps are skipped (the weights
    stay finite) and the scale falls; the scale is logged and kept in the checkpoint."""
    task = HalfTask(tiny_data, 1e6)
    _, after = weights_after(task, tiny_data, tmp_path, log_every=1)
    assert all(torch.isfinite(p).all() for p in after)
    scales = [r["loss_scale"] for r in map(json.loads, (tmp_path / "log.jsonl").open())
              if "loss_scale" in r]
    assert scales[0] < 65536.0 and scales == sorted(scales, reverse=True)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["loss_scale"]["scale"] == scales[-1]
    plain = LinearTask(tiny_data)  # every other task: no scaling, nothing logged
    train(plain, tiny_data.samples("train"), tiny_data.samples("val"), cfg(max_steps=2,
          log_every=1), ctx(tmp_path / "plain"))
    assert "loss_scale" not in (tmp_path / "plain" / "log.jsonl").read_text()


def test_resume_restores_the_loss_scale(tiny_data, tmp_path):
    """The scale falls over the first steps at gain 1e6; a resumed run that started again
    from 65536 would skip other steps and end elsewhere."""
    ref, run, resume = interrupted(tiny_data, tmp_path, lambda d: HalfTask(d, 1e6))
    resumed = HalfTask(tiny_data, 1e6)
    assert resume(resumed).steps == 23
    assert_same_weights(ref, resumed)
