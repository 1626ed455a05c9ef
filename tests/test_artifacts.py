"""Tensor files are written so that a killed writer leaves only names the next writer clears."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
from helpers import dead_pid
from safetensors import safe_open
from safetensors.torch import load_file

import leader
import leader.artifacts as artifacts
from leader.artifacts import remove_dead_temps, save_tensors, write_json_atomic


def test_save_tensors_round_trips_with_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, dtype=torch.bfloat16)}
    save_tensors(tensors, path, metadata={"key": "k1"})
    back = load_file(str(path))
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"key": "k1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def failed(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", failed)
    with pytest.raises(OSError):
        save_tensors({"x": torch.zeros(3)}, tmp_path / "shard-0.safetensors")
    assert not any(tmp_path.iterdir())


def test_what_a_killed_write_leaves_is_cleared_by_the_next_writer(tmp_path):
    """A kill skips every clean-up: what is left is the writer's PID-named directory with
    safetensors' own ``.tmpXXXXXX`` file in it, which :func:`remove_dead_temps` (called first
    by every resumable writer) removes once that process is gone."""
    left = tmp_path / f".shard-0.safetensors.tmp-{dead_pid()}"
    left.mkdir()
    (left / ".tmpAb12Cd").write_bytes(b"half a shard")
    live = tmp_path / f".shard-1.safetensors.tmp-{os.getpid()}"  # a write still running
    live.mkdir()
    assert remove_dead_temps(tmp_path) == [left]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_tensor_files_are_written_through_save_tensors():
    """safetensors' ``save_file`` writes through a ``.tmpXXXXXX`` file of its own, which a kill
    left in the target's directory (found by the export-features fault test): only
    :func:`save_tensors` may call it, inside a directory that a later run can clear."""
    offenders = []
    modules = list(Path(leader.__file__).parent.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        if path.name == "artifacts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                if any(a.name == "save_file" for a in node.names):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"use leader.artifacts.save_tensors: {offenders}"


def test_json_is_written_whole_and_a_killed_writers_temp_is_cleared(tmp_path, monkeypatch):
    out = tmp_path / "metrics.json"
    left = tmp_path / f".metrics.json.tmp-{dead_pid()}"
    left.write_text('{"half": ')
    write_json_atomic(out, {"jaccard": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]

    def failed(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", failed)
    with pytest.raises(OSError):
        write_json_atomic(out, {"jaccard": 0.9})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert "0.5" in out.read_text()
