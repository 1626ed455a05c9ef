"""Tensor files are written so that a killed writer leaves only names the next writer clears."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import dead_pid
from safetensors import safe_open
from safetensors.torch import load_file

import leader
import leader.artifacts as artifacts
from leader.artifacts import remove_dead_temps, save_tensors


def test_save_tensors_round_trips_with_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, dtype=torch.bfloat16)}
    save_tensors(tensors, path, metadata={"key": "k1"})
    back = load_file(str(path))
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"key": "k1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_a_write_killed_before_its_rename_leaves_a_temp_the_next_writer_clears(
    tmp_path, monkeypatch
):
    """The half-written file carries its writer's process id, so once that process is gone
    :func:`remove_dead_temps` (which every resumable writer calls first) removes it."""
    pid = dead_pid()
    monkeypatch.setattr(artifacts.os, "getpid", lambda: pid)

    def killed(*_args):
        raise KeyboardInterrupt  # stands for the kill: the rename never happens

    monkeypatch.setattr(artifacts.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_tensors({"x": torch.zeros(3)}, tmp_path / "shard-0.safetensors")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [f".shard-0.safetensors.tmp-{pid}"]
    assert remove_dead_temps(tmp_path) and not any(tmp_path.iterdir())


def test_no_module_writes_through_safetensors_save_file():
    """safetensors' ``save_file`` writes through a ``.tmpXXXXXX`` file of its own, which a kill
    leaves in the target's directory (found by the export-features fault test)."""
    offenders = []
    modules = list(Path(leader.__file__).parent.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                if any(a.name == "save_file" for a in node.names):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"use leader.artifacts.save_tensors: {offenders}"
