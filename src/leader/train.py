"""The one training loop shared by the teacher, the student and the neural baselines.

Read top to bottom: seeded data order → optimisation with gradient accumulation → validation
PRAUC at every epoch (or every N steps) → best weights kept, early stopping → checkpoints that
resume. A model plugs in through a :class:`Task` (collate, loss, predict, targets); the loop
knows nothing else about it.

Resuming: the checkpoint holds the trainable weights, the optimiser state, the loop counters
and the torch RNG state, and the data order is a pure function of (seed, epoch), so killing the
process and rerunning the same command continues to the same result as an uninterrupted run.

Several processes: launched by ``torchrun`` or ``accelerate launch``, ``accelerate`` wraps the
module in DDP (gloo on CPU, NCCL on GPUs); each rank takes every world_size-th sample of the
epoch's permutation, and every rank validates on the full validation set, so they agree on
early stopping without communicating.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leader.data.samples import Sample
from leader.errors import LeaderError
from leader.metrics import average_precision

CHECKPOINT = "checkpoint"
RUN_IDENTITY = "run.json"
BEST = "best.safetensors"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    epochs: int = 50
    max_steps: int | None = None  # optimiser steps; stops earlier than ``epochs`` if reached
    batch_size: int = 32  # per process
    lr: float = 5e-4
    weight_decay: float = 0.0
    grad_accum: int = 1
    eval_every: int | None = None  # optimiser steps; None = at the end of every epoch
    patience: int = 10  # evaluations without a better validation PRAUC before stopping
    seed: int = 42
    threads: int | None = None  # torch intra-op threads; None: leave torch's setting
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    progress: bool = True


def default_threads() -> int:
    """One torch thread unless ``OMP_NUM_THREADS`` says otherwise (student and baselines; the
    LLM teacher keeps torch's own default).

    The student's and the baselines' operations are small, and when other jobs share the cores
    two intra-op threads spin waiting for each other: on the shared 2-core machine (load ~5) a
    student step ran at 12 samples/s with 2 threads against 187 with 1 (a 15x loss), see
    benchmarks/results/student.md.
    """
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


class Task(Protocol):
    """What a model hands the loop. ``loss`` must call ``module(...)`` (forward) so DDP syncs."""

    module: torch.nn.Module

    def collate(self, samples: Sequence[Sample]) -> Any: ...

    def loss(
        self, module: torch.nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def predict(self, module: torch.nn.Module, batch: Any) -> torch.Tensor: ...

    def targets(self, batch: Any) -> torch.Tensor: ...


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    steps: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def to_device(batch: Any, device: torch.device) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: a frozen LLM backbone is never copied or saved."""
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The epoch's sample order: a pure function of (seed, epoch), sharded across ranks."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    usable = len(perm) - len(perm) % world if len(perm) >= world else len(perm)
    return perm[:usable][rank::world]


@torch.no_grad()
def predict_in_batches(
    task: Task,
    samples: Sequence[Sample],
    batch_size: int = 256,
    module: torch.nn.Module | None = None,
) -> np.ndarray:
    """Probabilities [len(samples), |drugs|] in eval mode."""
    module = module if module is not None else task.module
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        batch = to_device(task.collate(samples[start : start + batch_size]), device)
        out.append(task.predict(module, batch).float().cpu().numpy())
    module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def validation_prauc(task: Task, samples: Sequence[Sample], batch_size: int, module) -> float:
    """Mean average precision over the validation visits: the early-stopping criterion."""
    if not samples:
        return float("nan")
    probs = predict_in_batches(task, samples, batch_size, module)
    truth = np.concatenate(
        [
            task.targets(task.collate(samples[i : i + batch_size])).cpu().numpy()
            for i in range(0, len(samples), batch_size)
        ]
    )
    ap = average_precision(truth > 0, probs)
    return float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan")


# --- run directories ---------------------------------------------------------------------------


def run_dir_for(out: Path) -> Path:
    """Checkpoints live beside an artifact (``.<name>.run/``), which only appears when done."""
    out = Path(out)
    return out.parent / f".{out.name}.run"


def prepare_run_dir(run_dir: Path, identity: dict, force: bool) -> None:
    """Resume only a run started with the same options and data; ``force`` starts again.

    ``identity`` is everything that changes the result (model config, options, input hashes).
    """
    wanted = json.loads(json.dumps(identity, default=str))
    path = run_dir / RUN_IDENTITY
    if run_dir.exists():
        same = path.is_file() and json.loads(path.read_text()) == wanted
        if not same:
            if not force:
                raise LeaderError(
                    f"{run_dir}: holds an unfinished run with other options or data; rerun the "
                    "same command to resume it, or add --force to start again"
                )
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2))


# --- checkpoints -------------------------------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, module, opt, loop: dict, rank: int, is_main: bool) -> None:
    """Write ``run_dir/checkpoint`` atomically (per-rank RNG files, shared state from rank 0)."""
    final = run_dir / CHECKPOINT
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(module), str(tmp / "model.safetensors"))
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    _barrier()
    save_file({"torch": torch.get_rng_state()}, str(tmp / f"rng-{rank}.safetensors"))
    _barrier()
    if is_main:
        (tmp / "state.json").write_text(json.dumps(loop))  # written last: marks it complete
        old = run_dir / f"{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_checkpoint(run_dir: Path, module, opt, rank: int) -> dict | None:
    ckpt = run_dir / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        return None
    loop = json.loads((ckpt / "state.json").read_text())
    load_trainable_state(module, load_file(str(ckpt / "model.safetensors")))
    meta = json.loads((ckpt / "optimizer.json").read_text())
    _optimizer_from_tensors(opt, load_file(str(ckpt / "optimizer.safetensors")), meta)
    rng = ckpt / f"rng-{rank}.safetensors"
    if rng.is_file():
        torch.set_rng_state(load_file(str(rng))["torch"])
    return loop


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


# --- the loop ----------------------------------------------------------------------------------


def train(
    task: Task,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    config: TrainConfig,
    run_dir: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``task.module`` in place; on return it holds the best validation weights.

    ``on_eval(step, val_prauc)`` after each validation (a tuner prunes by raising there)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not train_samples:
        raise LeaderError("training split is empty: nothing to train on")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world, is_main = (
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.is_main_process,
    )
    set_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    module = task.module.to(accelerator.device)
    params = [p for p in module.parameters() if p.requires_grad]
    # fused: one kernel for all parameters instead of ~10 ops per tensor (2.4x faster student
    # steps on CPU with the wide path's large embedding); not for half precision on CPU
    fused = all(p.dtype in (torch.float32, torch.float64) for p in params)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    wrapped, opt = accelerator.prepare(module, opt)

    loop = {
        "config": asdict(config),
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "best_score": -math.inf,
        "best_step": 0,
        "bad_evals": 0,
        "last_eval_step": -1,
        "history": [],
        "done": False,
    }
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        resumed = load_checkpoint(run_dir, module, opt, rank)
        if resumed is not None:
            if _comparable(resumed["config"]) != _comparable(loop["config"]):
                raise LeaderError(
                    f"{run_dir / CHECKPOINT}: checkpoint was made with other training options; "
                    "use the same options to resume, or --force to start again"
                )
            loop = resumed
    best_state = (
        load_file(str(run_dir / BEST))
        if run_dir and (run_dir / BEST).is_file()
        else trainable_state(module)
    )

    def log(record: dict) -> None:
        loop["history"].append(record)
        if run_dir is not None and is_main:
            with open(run_dir / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate() -> bool:
        """Validate, keep the best weights, checkpoint; True when patience has run out."""
        nonlocal best_state
        score = validation_prauc(task, val_samples, max(config.batch_size, 64), module)
        improved = not math.isnan(score) and score > loop["best_score"]
        if math.isnan(score) or improved:  # no validation set: the latest weights are the best
            loop["best_score"] = score if improved else loop["best_score"]
            loop["best_step"], loop["bad_evals"] = loop["step"], 0
            best_state = trainable_state(module)
            if run_dir is not None and is_main:
                save_file(best_state, str(run_dir / BEST))
        else:
            loop["bad_evals"] += 1
        loop["last_eval_step"] = loop["step"]
        log({"step": loop["step"], "epoch": loop["epoch"], "val_prauc": score})
        if on_eval is not None:
            on_eval(loop["step"], score)
        if run_dir is not None:
            save_checkpoint(run_dir, module, opt, loop, rank, is_main)
        return loop["bad_evals"] >= config.patience

    per_epoch = math.ceil(
        len(epoch_order(len(train_samples), 0, 0, rank, world)) / config.batch_size
    )
    total_steps = config.max_steps or math.ceil(per_epoch * config.epochs / config.grad_accum)
    progress = _progress(config.progress and is_main, total_steps, loop["step"])
    module.train()
    stop = loop["done"]
    seen, t0, running = 0, time.perf_counter(), []
    while not stop and loop["epoch"] < config.epochs:
        order = epoch_order(len(train_samples), config.seed, loop["epoch"], rank, world)
        batches = [
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        ]
        for b in range(loop["batch"], len(batches)):
            batch = to_device(
                task.collate([train_samples[i] for i in batches[b]]), accelerator.device
            )
            loss, logs = task.loss(wrapped, batch)
            accelerator.backward(loss / config.grad_accum)
            running.append(float(loss.detach()))
            seen += len(batches[b]) * world
            loop["batch"] = b + 1
            if (b + 1) % config.grad_accum and b + 1 < len(batches):
                continue
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loop["step"] += 1
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            progress.update(loop["step"], float(np.mean(running[-20:])), rate)
            if loop["step"] % config.log_every == 0:
                log(
                    {
                        "step": loop["step"],
                        "epoch": loop["epoch"],
                        "loss": float(np.mean(running)),
                        "samples_per_s": rate,
                        **logs,
                    }
                )
                running = []
            if on_step is not None:
                on_step(loop["step"])
            at_max = config.max_steps is not None and loop["step"] >= config.max_steps
            if config.eval_every and loop["step"] % config.eval_every == 0 and not at_max:
                if evaluate():
                    stop = True
                    break
            if at_max:
                stop = True
                break
        if stop:
            break
        loop["epoch"], loop["batch"] = loop["epoch"] + 1, 0
        if config.eval_every is None and evaluate():
            stop = True
    stopped_early = loop["bad_evals"] >= config.patience
    if not loop["done"]:
        if loop["last_eval_step"] != loop["step"]:
            evaluate()
        loop["done"] = True
        if run_dir is not None:
            save_checkpoint(run_dir, module, opt, loop, rank, is_main)
    progress.close()
    load_trainable_state(module, best_state)
    module.eval()
    return TrainResult(
        best_score=float(loop["best_score"]),
        best_step=int(loop["best_step"]),
        steps=int(loop["step"]),
        stopped_early=stopped_early,
        history=loop["history"],
    )


def _comparable(config: dict) -> dict:
    """Options that change the result; ``progress``, ``log_every`` and ``threads`` do not."""
    skip = ("progress", "log_every", "epochs", "threads")
    return {k: v for k, v in config.items() if k not in skip}


class _progress:
    """A rich progress bar with loss and throughput, or nothing (other ranks, tests)."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.1f} samples/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=total, completed=completed, loss=0.0, rate=0.0
            )

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
