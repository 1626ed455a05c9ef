"""Bundles and patients shared by the recommend / serve / browser tests (not a test module)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import leader.bundle as bundle
from leader.models.base import model_class


def save(model, out: Path) -> Path:
    return bundle.save_bundle(model, out, metrics={"test": {"jaccard": 0.25}})


def make_bundles(tiny_data, root: Path) -> dict[str, Path]:
    """``popular`` and ``repeat-last`` fitted on the fixture; ``ddi``: a popular model whose two
    most probable classes are an interacting pair of the fixture's DDI list."""
    out = {}
    for name in ("popular", "repeat-last"):
        out[name] = save(model_class(name)(tiny_data.schema).fit(tiny_data), root / name)
    a, b = tiny_data.ddi_pairs[0]
    model = model_class("popular")(tiny_data.schema)
    model.build()
    freq = torch.full((len(tiny_data.drugs),), 0.1)
    freq[tiny_data.drugs.index[a]] = 0.9
    freq[tiny_data.drugs.index[b]] = 0.8
    model.frequency = freq
    out["ddi"] = save(model, root / "ddi")
    return out


@pytest.fixture(scope="session")
def bundles(tiny_data, tmp_path_factory) -> dict[str, Path]:
    return make_bundles(tiny_data, tmp_path_factory.mktemp("bundles"))


def simple_patient(data, history: bool = False) -> dict:
    """A two-code current visit; with ``history``, an earlier visit with two drugs."""
    dx = data.vocab["diagnoses"].codes
    px = data.vocab["procedures"].codes
    visits = [{"diagnoses": [dx[0], dx[1]], "procedures": [px[0]]}]
    if history:
        visits.insert(
            0, {"diagnoses": [dx[2]], "procedures": [], "drugs": list(data.drugs.codes[3:5])}
        )
    return {"profile": {"gender": "F", "age": 70, "insurance": "Medicare"}, "visits": visits}


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `leader ...` in-process through the real entry point (error handling included)."""
    from leader.cli import main

    monkeypatch.setattr(sys, "argv", ["leader", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
