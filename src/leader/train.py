"""The one training loop shared by the teacher, the student and the neural baselines.

Read top to bottom: seeded data order → optimisation with gradient accumulation → validation
PRAUC at every epoch (or every N steps) → best weights kept, early stopping → checkpoints that
resume. A model plugs in through a :class:`Task` (collate, loss, predict, targets); the loop
knows nothing else about it.

Resuming: the checkpoint holds the trainable weights, the optimiser state, the loop counters
and the torch RNG states (CPU, and the GPU's), and the data order is a pure function of (seed,
epoch), so killing the process and rerunning the same command continues to the same result as an
uninterrupted run: bit for bit on CPU; on a GPU to within its kernels' own run-to-run variation
(embedding backward, ``index_add_`` and cuDNN's GRU are not deterministic there).

Several processes: launched by ``torchrun`` or ``accelerate launch``, ``accelerate`` wraps the
module in DDP (gloo on CPU, NCCL on GPUs); each rank takes every world_size-th sample of the
epoch's permutation, and every rank validates on the full validation set, so they agree on
early stopping without communicating.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from leader.artifacts import save_tensors
from leader.configs import Config, option
from leader.data.samples import Sample
from leader.distributed import barrier
from leader.errors import LeaderError
from leader.metrics import average_precision

CHECKPOINT = "checkpoint"
BEST = "best.safetensors"
LOG = "log.jsonl"


@dataclass
class TrainConfig(Config):
    """Optimisation settings shared by every model that trains with :func:`train`."""

    epochs: int = option(50, "Passes over the training split.", ge=1)
    max_steps: int | None = option(None, "Stop after this many optimiser steps.", ge=1)
    batch_size: int = option(32, "Samples per step and process.", ge=1)
    lr: float = option(5e-4, "Learning rate (AdamW).", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    grad_accum: int = option(1, "Batches per optimiser step.", ge=1)
    eval_every: int | None = option(
        None, "Validate every N optimiser steps (default: every epoch).", ge=1
    )
    patience: int = option(10, "Validations without a better PRAUC before stopping.", ge=1)
    seed: int = option(42, "Seed of initialisation and data order.")
    threads: int | None = option(
        None, "Torch threads per process on CPU (default: 1, or OMP_NUM_THREADS).", ge=1,
        identity=False)
    max_grad_norm: float | None = option(1.0, "Clip gradients to this norm.", gt=0, cli=False)
    log_every: int = option(10, "Optimiser steps between log records.", ge=1, cli=False,
                            identity=False)


@dataclass
class FitContext:
    """How a fit runs, apart from what it learns: where checkpoints go, what is shown, and the
    teacher features a distilled model reads. None of it is saved with the model."""

    run_dir: Path | None = None
    progress: bool = True
    on_step: Callable[[int], None] | None = None
    on_info: Callable[[str], None] | None = None  # one-line notes before training
    on_eval: Callable[[int, float], None] | None = None  # (step, val PRAUC); a tuner prunes here
    teacher: Any = None  # leader.features.TeacherFeatures, for models that distill


def default_threads() -> int:
    """One torch thread per process on CPU unless ``OMP_NUM_THREADS`` says otherwise.

    Small CPUs are usually shared (several processes or jobs), and then a second intra-op thread
    only spins waiting for the other: on the shared 2-core machine (load ~5) a student step ran
    at 12 samples/s with 2 threads against 187 with 1 (a 15x loss), see
    benchmarks/results/student.md; the teacher measured the same (docs/teacher.md).
    """
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


BUCKET_GROUP = 50  # batches per group sorted by length: order stays random across groups


def cut_batches(
    order: Sequence[int] | np.ndarray,
    lengths: Sequence[int] | None,
    batch_size: int,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Cut ``order`` into consecutive batches of at most ``batch_size`` rows and, with
    ``lengths``, at most ``max_tokens`` padded tokens (rows × longest), so that a run of long
    prompts is split rather than run out of memory. A single over-long row is its own batch."""
    order = np.asarray(order, dtype=np.int64)
    if lengths is None or not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start, longest = [], 0, 0
    for i, index in enumerate(order):
        longest_with = max(longest, int(lengths[index]))
        rows = i - start + 1
        if i > start and (rows > batch_size or rows * longest_with > max_tokens):
            batches.append(order[start:i])
            start, longest_with = i, int(lengths[index])
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches


def sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Batches of similar length for inference (validation, test, export): least padding."""
    return cut_batches(np.argsort(np.asarray(lengths), kind="stable"), lengths, batch_size,
                       max_tokens)


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    lengths: Sequence[int] | None = None,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """The epoch's batches of sample indices, a pure function of (seed, epoch).

    Without ``lengths``: consecutive slices of :func:`epoch_order`. With them (length
    bucketing): a seeded permutation is cut into groups of ``BUCKET_GROUP`` batches, each group
    is sorted by length and cut (capped by ``max_tokens``), and the batches are shuffled, so the
    data order stays random while a batch holds prompts of similar length. Every sample is in
    exactly one batch. Several ranks: the batches go in runs of ``world`` neighbours in length
    order, the runs are shuffled and rank r takes the r-th of each, so that the batches of one
    step (which the ranks finish together) are of similar length; a random ``len % world``
    batches sit the epoch out so that every rank has the same number of steps."""
    if lengths is None:
        _enough_for(world, n)  # each rank takes every world-th sample
        order = epoch_order(n, seed, epoch, rank, world)
        return cut_batches(order, None, batch_size)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    lengths = np.asarray(lengths)
    group = batch_size * BUCKET_GROUP
    batches: list[np.ndarray] = []
    for start in range(0, n, group):
        chunk = perm[start : start + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(cut_batches(chunk, lengths, batch_size, max_tokens))
    _enough_for(world, n, len(batches))
    if len(batches) % world:  # the same number of steps on every rank
        dropped = set(rng.choice(len(batches), len(batches) % world, replace=False).tolist())
        batches = [b for i, b in enumerate(batches) if i not in dropped]
    # the ranks of one step take neighbours in length order, so none waits long for the others
    steps = [batches[i : i + world] for i in range(0, len(batches), world)]
    steps = [steps[i] for i in rng.permutation(len(steps))]
    return [step[rank] for step in steps if rank < len(step)]


def _enough_for(world: int, n: int, batches: int | None = None) -> None:
    """Every rank needs a batch at every step (DDP waits for all of them): at least ``world``
    batches (length buckets) or, dealt sample by sample, ``world`` samples."""
    count, made = (n, "") if batches is None else (batches, f" make {batches} batch(es) per epoch")
    if world > 1 and count < world:
        raise LeaderError(
            f"training split: {n} sample(s){made}, fewer than the {world} processes (each needs "
            "a batch per step); run fewer processes"
        )


def task_lengths(task: Any, samples: Sequence[Sample]) -> list[int] | None:
    """Token lengths of ``samples`` when the task has them (the teacher), else None."""
    lengths = getattr(task, "lengths", None)
    return list(lengths(samples)) if lengths is not None else None


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
    lengths = task_lengths(task, samples)
    if lengths is None:
        batches = cut_batches(range(len(samples)), None, batch_size)
    else:  # similar lengths together, results back in the input order
        batches = sorted_batches(lengths, batch_size, getattr(task, "max_batch_tokens", None))
    out: list[np.ndarray] = [np.zeros(0)] * len(samples)
    for rows in batches:
        batch = to_device(task.collate([samples[i] for i in rows]), device)
        probs = task.predict(module, batch).float().cpu().numpy()
        for i, row in zip(rows, probs, strict=True):
            out[i] = row
    module.train(was_training)
    return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def validation_prauc(task: Task, samples: Sequence[Sample], batch_size: int, module) -> float:
    """Mean average precision over the validation visits: the early-stopping criterion."""
    if not samples:
        return float("nan")
    probs = predict_in_batches(task, samples, batch_size, module)
    with torch.no_grad():  # collating is not training: a task may count training batches
        truth = np.concatenate(
            [
                task.targets(task.collate(samples[i : i + batch_size])).cpu().numpy()
                for i in range(0, len(samples), batch_size)
            ]
        )
    ap = average_precision(truth > 0, probs)
    return float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan")


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


def save_checkpoint(
    run_dir: Path, module, opt, state: LoopState, rank: int, is_main: bool
) -> None:
    """Write ``run_dir/checkpoint`` atomically (per-rank RNG files, shared state from rank 0)."""
    final = run_dir / CHECKPOINT
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(trainable_state(module), tmp / "model.safetensors")
        tensors, meta = _optimizer_tensors(opt)
        save_tensors(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    barrier()
    save_tensors(rng_state(module), tmp / f"rng-{rank}.safetensors")
    barrier()
    if is_main:
        # written last (and whole, by a rename): marks the checkpoint complete
        (tmp / ".state.json.tmp").write_text(json.dumps(asdict(state)))
        os.replace(tmp / ".state.json.tmp", tmp / "state.json")
        old = run_dir / f"{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(run_dir: Path, module, opt, rank: int) -> tuple[LoopState, Path] | None:
    """The newest complete checkpoint and where it was: a kill inside :func:`save_checkpoint`'s
    renames can leave the new one as ``checkpoint.tmp`` (complete once it has ``state.json``)
    or only the previous one as ``checkpoint.old``."""
    names = (CHECKPOINT, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old")
    found = [run_dir / n for n in names if (run_dir / n / "state.json").is_file()]
    if not found:
        return None
    ckpt = found[0]
    state = LoopState(**json.loads((ckpt / "state.json").read_text()))
    if state.world is None:  # written before LoopState recorded it: one RNG file per process
        state.world = max(1, len(list(ckpt.glob("rng-*.safetensors"))))
    load_trainable_state(module, load_file(str(ckpt / "model.safetensors")))
    meta = json.loads((ckpt / "optimizer.json").read_text())
    _optimizer_from_tensors(opt, load_file(str(ckpt / "optimizer.safetensors")), meta)
    rng = ckpt / f"rng-{rank}.safetensors"
    if rng.is_file():
        set_rng_state(module, load_file(str(rng)))
    return state, ckpt


def rng_state(module) -> dict[str, torch.Tensor]:
    """This process's random state: the CPU generator's and, on a GPU, that GPU's (which draws
    the dropout masks there)."""
    states = {"torch": torch.get_rng_state()}
    device = next(module.parameters()).device
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(module, states: dict[str, torch.Tensor]) -> None:
    """Restore :func:`rng_state` (a GPU's state only where the module runs on a GPU)."""
    torch.set_rng_state(states["torch"])
    device = next(module.parameters()).device
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


# --- the loop ----------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint (``state.json``) and restored on resume."""

    config: dict = field(default_factory=dict)  # the TrainConfig identity it was started with
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already done
    step: int = 0  # optimiser steps
    best_score: float = -math.inf
    best_step: int = 0
    bad_evals: int = 0
    last_eval_step: int = -1
    done: bool = False
    loss_scale: dict = field(default_factory=dict)  # GradScaler state (fp16 tasks), resumed
    history: list[dict] = field(default_factory=list)
    # processes that trained it: each rank's share of an epoch depends on it, so a resume
    # inside an epoch needs as many (None: a checkpoint from before it was recorded)
    world: int | None = None


@dataclass
class Run:
    """One training run's bookkeeping: its loop state, the best weights so far, the log and the
    checkpoints (when it has a run directory). The loop in :func:`train` drives it."""

    task: Task
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    config: TrainConfig
    val_samples: Sequence[Sample]
    run_dir: Path | None
    rank: int
    is_main: bool
    world: int
    on_eval: Callable[[int, float], None] | None = None
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler(enabled=False))
    state: LoopState = field(default_factory=LoopState)
    best: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir) if self.run_dir is not None else None
        self.state = LoopState(config=self.config.identity(), world=self.world)
        self.best = trainable_state(self.module)

    @property
    def saving(self) -> bool:
        return self.run_dir is not None and self.is_main

    def resume(self) -> None:
        """Continue from the run directory's checkpoint, if it has one of the same options."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        found = load_checkpoint(self.run_dir, self.module, self.opt, self.rank)
        if found is not None:
            resumed, where = found
            if resumed.config != self.state.config:
                raise LeaderError(
                    f"{where}: checkpoint was made with other training "
                    "options; use the same options to resume, or --force to start again"
                )
            if resumed.world != self.world and resumed.batch and not resumed.done:
                raise LeaderError(
                    f"{where}: stopped inside an epoch of a run of "
                    f"{resumed.world} process(es), resumed with {self.world}: the epoch's "
                    f"batches are dealt per process, so resume with {resumed.world} (e.g. "
                    f"torchrun --nproc_per_node {resumed.world}), or --force to start again"
                )
            resumed.world = self.world  # from the next epoch on, the batches of this many
            self.state = resumed
            if resumed.loss_scale and self.scaler.is_enabled():
                self.scaler.load_state_dict(resumed.loss_scale)
        if (self.run_dir / BEST).is_file():
            self.best = load_file(str(self.run_dir / BEST))

    def log(self, record: dict) -> None:
        self.state.history.append(record)
        if self.saving:
            with open(self.run_dir / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(self) -> None:
        if self.scaler.is_enabled():
            self.state.loss_scale = self.scaler.state_dict()
        if self.run_dir is not None:
            save_checkpoint(self.run_dir, self.module, self.opt, self.state, self.rank,
                            self.is_main)

    def validate(self) -> bool:
        """Score validation, keep the best weights, checkpoint; True when patience ran out."""
        state, config = self.state, self.config
        score = validation_prauc(self.task, self.val_samples, max(config.batch_size, 64),
                                 self.module)
        improved = not math.isnan(score) and score > state.best_score
        if math.isnan(score) or improved:  # no validation set: the latest weights are the best
            state.best_score = score if improved else state.best_score
            state.best_step, state.bad_evals = state.step, 0
            self.best = trainable_state(self.module)
            if self.saving:  # atomically: a kill mid-write must not spoil the resume
                save_tensors(self.best, self.run_dir / BEST)
        else:
            state.bad_evals += 1
        state.last_eval_step = state.step
        self.log({"step": state.step, "epoch": state.epoch, "val_prauc": score})
        if self.on_eval is not None:
            self.on_eval(state.step, score)
        self.checkpoint()
        return state.bad_evals >= config.patience


def train(
    task: Task,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    config: TrainConfig,
    context: FitContext | None = None,
) -> TrainResult:
    """Train ``task.module`` in place; on return it holds the best validation weights."""
    from accelerate import Accelerator  # deferred on purpose: accelerate is slow to import
    from accelerate.utils import set_seed

    context = context or FitContext()
    if not train_samples:
        raise LeaderError("training split is empty: nothing to train on")
    # precision is each task's own choice (the teacher's autocast, its fp32 drug layer), not
    # accelerate's, which `accelerate launch` would otherwise take from the user's config; a
    # DeepSpeed / FSDP config keeps its own, which decides how the sharded parameters are kept
    sharded = any(os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true"
                  for kind in ("DEEPSPEED", "FSDP"))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=None if sharded else "no")
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    set_seed(config.seed)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(config.threads or default_threads())
    module = task.module.to(accelerator.device)
    params = [p for p in module.parameters() if p.requires_grad]
    # fused: one kernel for all parameters instead of ~10 ops per tensor (2.4x faster student
    # steps on CPU with the wide path's large embedding); not for half precision on CPU
    fused = all(p.dtype in (torch.float32, torch.float64) for p in params)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    wrapped, opt = accelerator.prepare(module, opt)
    # dynamic loss scaling for half-precision (fp16) backbones, whose small gradients underflow:
    # the loss is scaled up, the gradients unscaled before clipping, a step with inf/NaN
    # gradients skipped and the scale lowered (a no-op for every other task)
    scaler = torch.amp.GradScaler(accelerator.device.type,
                                  enabled=bool(getattr(task, "loss_scaling", False)))

    # resume: the checkpoint's loop state, weights, optimiser, loss scale and RNG
    run = Run(task, module, opt, config, val_samples, context.run_dir, rank, is_main, world,
              context.on_eval, scaler)
    run.resume()
    state = run.state

    lengths = task_lengths(task, train_samples)  # the teacher's token lengths: length buckets
    max_tokens = getattr(task, "max_batch_tokens", None)
    per_epoch = len(epoch_batches(len(train_samples), config.batch_size, 0, 0, rank, world,
                                  lengths, max_tokens))
    total = config.max_steps or math.ceil(per_epoch * config.epochs / config.grad_accum)
    progress = _progress(context.progress and is_main, total, state.step)
    module.train()
    stop = state.done
    seen, t0, losses = 0, time.perf_counter(), []
    while not stop and state.epoch < config.epochs:
        batches = epoch_batches(len(train_samples), config.batch_size, config.seed, state.epoch,
                                rank, world, lengths, max_tokens)
        for b in range(state.batch, len(batches)):
            batch = task.collate([train_samples[i] for i in batches[b]])
            loss, logs = task.loss(wrapped, to_device(batch, accelerator.device))
            accelerator.backward(scaler.scale(loss / config.grad_accum))
            losses.append(float(loss.detach()))
            seen += len(batches[b]) * world
            state.batch = b + 1
            if (b + 1) % config.grad_accum and b + 1 < len(batches):
                continue  # accumulate
            scaler.unscale_(opt)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(opt)  # skipped when the unscaled gradients hold inf/NaN
            scaler.update()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            progress.update(state.step, float(np.mean(losses[-20:])), rate)
            if state.step % config.log_every == 0:
                scale = {"loss_scale": scaler.get_scale()} if scaler.is_enabled() else {}
                run.log({"step": state.step, "epoch": state.epoch,
                         "loss": float(np.mean(losses)), "samples_per_s": rate, **scale, **logs})
                losses = []
            if context.on_step is not None:
                context.on_step(state.step)
            at_max = config.max_steps is not None and state.step >= config.max_steps
            if config.eval_every and state.step % config.eval_every == 0 and not at_max:
                stop = run.validate()
            if stop or at_max:
                stop = True
                break
        if stop:
            break
        state.epoch, state.batch = state.epoch + 1, 0
        if config.eval_every is None:
            stop = run.validate()

    stopped_early = state.bad_evals >= config.patience
    if not state.done:
        if state.last_eval_step != state.step:
            run.validate()
        state.done = True
        run.checkpoint()
    progress.close()
    load_trainable_state(module, run.best)
    module.eval()
    return TrainResult(state.best_score, state.best_step, state.step, stopped_early,
                       state.history)


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
