"""Run `leader ...` in a child process that can be killed with SIGKILL at a chosen moment
(not a test module).

Children are forked from a forkserver that has already imported torch and leader, so a run
costs its own work rather than seconds of imports, and each is a real process killed the
way the kernel kills one: no exception handler, no ``finally`` block, no atexit.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

_CONTEXT = None
# Process.start() polls every live child of this process (multiprocessing.process._cleanup).
# With a forkserver, a poll reads the child's exit code from a pipe; two threads reading one
# pipe at once leave one of them at end-of-file, which multiprocessing reports as exit code
# 255 (it failed CI once). So a child is started under this lock and then taken out of
# multiprocessing's list of children: only the thread that started it ever polls it.
_START = threading.Lock()
# imported once by the forkserver, so a child pays only for its own work
PRELOAD = [
    "torch", "polars", "transformers", "peft", "sklearn.linear_model", "scipy.sparse",
    "matplotlib", "matplotlib.pyplot", "typer", "rich", "pydantic", "leader.cli",
    "leader.commands.data", "leader.commands.synth", "leader.commands.teacher",
    "leader.commands.student", "leader.commands.evaluation", "leader.commands.recommend",
    "leader.commands.tune", "leader.data.cohort", "leader.pipelines", "leader.models.baselines",
    "leader.models.baselines.logreg", "leader.models.baselines.popular",
    "leader.models.baselines.retain", "leader.models.teacher", "leader.features", "leader.report",
    "fault_runner",
]


def context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _child(args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(1)
    from leader.cli import main

    sys.argv = ["leader", *args]
    try:
        main()
    except SystemExit as e:
        sys.stdout.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)
    sys.stdout.flush()
    os._exit(0)


def run(args: list[str], log: Path, kill_after: float | None = None, limit: float = 120.0):
    """Run ``leader *args``; SIGKILL it after ``kill_after`` seconds if still running.

    Returns (exit code or None when killed, seconds it ran).
    """
    start = time.perf_counter()
    proc = context().Process(target=_child, args=(args, str(log)))
    with _START:
        proc.start()
        multiprocessing.process._children.discard(proc)
    proc.join(kill_after if kill_after is not None else limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        if kill_after is None:
            raise TimeoutError(f"leader {' '.join(args)} ran over {limit} s")
        return None, time.perf_counter() - start
    return proc.exitcode, time.perf_counter() - start
