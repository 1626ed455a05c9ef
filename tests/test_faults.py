"""Fault injection: `prepare`, `train-baseline` (logreg, retain), `export-features` and `compare`
killed with SIGKILL at seeded random moments on small data.

After every kill: nothing at the output path unless it is complete (identical to an
uninterrupted run); rerunning the same command finishes, resumes where it can, leaves no
temporary leftovers, and gives results identical to the uninterrupted run (training
included: the weights' hashes match).

Each command is killed ``LEADER_FAULT_N`` times (default 20), two trials at a time. Children
are forked from a server that has already imported what the commands need (fault_runner), so
a trial costs the command's own work.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fault_runner
import pytest
from conftest import make_tiny_dataset
from safetensors import safe_open

from leader.artifacts import sha256_file

N = int(os.environ.get("LEADER_FAULT_N", "20"))
PARALLEL = 2  # trials at a time
SEED = 13
# when, with what, how fast; the running loss (averaged since the last log or resume); and the
# training log's digest in the manifest (its lines are compared on their own, see content())
VOLATILE = re.compile(r"^(created|versions|train_log\.jsonl|loss)$|_ms(_|$)|seconds|_per_s$")


def stable(value):
    """A JSON value without the keys that record when or how fast, not what."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def content(path: Path) -> str:
    """A file's content, up to what legitimately varies between identical runs."""
    if path.suffix == ".json":
        return json.dumps(stable(json.loads(path.read_text())), sort_keys=True)
    if path.suffix == ".jsonl":  # a resumed run logs again the steps after its last checkpoint
        records = [stable(json.loads(line)) for line in path.read_text().splitlines()]
        last = {(r.get("step"), tuple(sorted(r))): r for r in records}
        return json.dumps(sorted(last.values(), key=lambda r: json.dumps(r, sort_keys=True)))
    if path.suffix == ".safetensors":  # the header's metadata order is not fixed
        h = hashlib.sha256()
        with safe_open(str(path), framework="pt") as f:
            h.update(json.dumps(f.metadata(), sort_keys=True).encode())
            for name in sorted(f.keys()):
                h.update(name.encode() + f.get_tensor(name).numpy().tobytes())
        return h.hexdigest()
    if path.suffix in (".md", ".html", ".png", ".svg"):  # reports show timings
        return "present"
    return sha256_file(path)


def signature(directory: Path) -> dict[str, str]:
    """What an artifact holds: every file's content (see :func:`content`)."""
    return {
        str(p.relative_to(directory)): content(p) for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leftovers(place: Path) -> list[str]:
    """Temporary names a killed writer can leave: ``.X.tmp-*``, ``.X.old-*``, ``*.tmp-*``."""
    if not place.exists():
        return []
    return sorted(
        str(p.relative_to(place)) for p in place.rglob("*") if ".tmp" in p.name or ".old-" in p.name
    )


@dataclass
class Job:
    name: str
    args: Callable[[Path], list[str]]  # the command, given the trial's work directory
    output: Callable[[Path], Path]  # where its artifact appears
    force: bool = True  # rerun with --force when a complete artifact is already there
    marker: str | None = None  # the file whose presence says "complete" (default: the path)

    def looks_complete(self, out: Path) -> bool:
        return (out / self.marker).exists() if self.marker else out.exists()


def check_trial(job: Job, work: Path, reference: dict, delay: float, log: Path) -> str:
    """One kill and one rerun; returns what happened to the killed run (for the summary)."""
    out = job.output(work)
    code, _ = fault_runner.run(job.args(work), log, kill_after=delay)
    outcome = "finished" if code is not None else "killed"
    assert code in (None, 0), log.read_text()
    if job.looks_complete(out):
        assert signature(out) == reference, f"{job.name}: killed at {delay:.2f}s: incomplete"
        outcome += ", complete artifact"
    rerun = job.args(work) + (["--force"] if job.force and out.exists() else [])
    code, _ = fault_runner.run(rerun, log)
    assert code == 0, log.read_text()
    assert signature(out) == reference, f"{job.name}: rerun after a kill at {delay:.2f}s differs"
    assert leftovers(work) == [], f"{job.name}: leftovers after the rerun"
    return outcome


def kill_at_random_points(job: Job, root: Path, prepare: Callable[[Path], None] | None = None):
    """The reference run, then N seeded kills, two trials at a time (one per core: each trial
    has its own work directory and log, and a kill is a moment in wall-clock time, so a slower
    shared core only moves where in the work it lands)."""
    ref_dir = root / "reference"
    ref_dir.mkdir()
    if prepare:
        prepare(ref_dir)
    log = root / f"{job.name}.log"
    fault_runner.run(["info", str(root / "none")], log)  # start the forkserver: not timed
    code, seconds = fault_runner.run(job.args(ref_dir), log)
    assert code == 0, log.read_text()
    reference = signature(job.output(ref_dir))
    assert reference
    rng = random.Random(f"{job.name}-{SEED}")
    delays = [rng.uniform(0.02, seconds * 1.05) for _ in range(N)]

    def trial(i: int) -> str:
        work = root / f"trial{i}"
        work.mkdir()
        if prepare:
            prepare(work)
        outcome = check_trial(job, work, reference, delays[i], root / f"{job.name}-{i}.log")
        shutil.rmtree(work)
        return outcome

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        outcomes = list(pool.map(trial, range(N)))
    assert sum("killed" in o for o in outcomes) >= N // 2, outcomes  # most runs really died


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("faults") / "data", patients=24)


@pytest.mark.slow
def test_kill_prepare(tmp_path):
    job = Job(
        "prepare",
        lambda w: ["prepare", "--source", "mimic3", "--root", "demo", "--out", str(w / "data")],
        lambda w: w / "data",
    )
    kill_at_random_points(job, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logreg", "retain"])
def test_kill_train_baseline(model, small_data, tmp_path):
    options = ["--epochs", "3", "--batch-size", "8"] if model == "retain" else []
    job = Job(
        f"train-{model}",
        lambda w: ["train-baseline", model, "--data", str(small_data), "--out", str(w / "model"),
                   *options],
        lambda w: w / "model",
    )
    kill_at_random_points(job, tmp_path)


@pytest.mark.slow
def test_kill_compare(small_data, tmp_path_factory, tmp_path):
    models = tmp_path_factory.mktemp("compare-models")
    for name in ("popular", "repeat-last"):
        args = ["train-baseline", name, "--data", str(small_data), "--out", str(models / name)]
        assert fault_runner.run(args, models / "log")[0] == 0
    job = Job(
        "compare",
        lambda w: ["compare", str(models / "popular"), str(models / "repeat-last"),
                   "--data", str(small_data), "--out", str(w / "report"), "--rounds", "3"],
        lambda w: w / "report",
    )
    kill_at_random_points(job, tmp_path)


@pytest.mark.slow
def test_kill_export_features(small_data, tmp_path_factory, tmp_path):
    teacher = tmp_path_factory.mktemp("teacher") / "teacher"
    args = ["train-teacher", "--data", str(small_data), "--out", str(teacher), "--llm", "tiny",
            "--max-steps", "1", "--max-length", "256", "--no-export-features"]
    assert fault_runner.run(args, teacher.parent / "log")[0] == 0

    assert not (teacher / "features").exists()  # the export below computes every shard

    def fresh_teacher(work: Path) -> None:
        shutil.copytree(teacher, work / "teacher")

    job = Job(
        "export-features",
        lambda w: ["export-features", "--teacher", str(w / "teacher"), "--data", str(small_data),
                   "--batch-size", "4"],
        lambda w: w / "teacher" / "features",
        force=False,  # it reuses finished shards instead
        marker="index.json",  # written last: shards without it are work in progress
    )
    kill_at_random_points(job, tmp_path, prepare=fresh_teacher)
