"""Shared fixtures: a tiny prepared cohort written through the real DATA_DIR writer."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from leader.artifacts import atomic_dir  # noqa: E402

# Tiny models on a 2-core machine: a second thread only contends (one training test: 24 s → 1 s).
torch.set_num_threads(1)
from leader.data.dataset import UNKNOWN, Vocab, age_bucket, write_dataset  # noqa: E402

PROFILE_FIELDS = [
    "gender",
    "age",
    "insurance",
    "language",
    "religion",
    "marital_status",
    "ethnicity",
]


def make_tiny_dataset(out: Path, patients: int = 60, seed: int = 0) -> Path:
    """A small cohort with learnable structure: each diagnosis implies a drug."""
    rng = random.Random(seed)
    dx = [f"icd9:{400 + i}" for i in range(30)]
    px = [f"icd9:{3600 + i}" for i in range(12)]
    drugs = [f"{c}0{n}A" for c in "ABCN" for n in range(4)][:14]
    rows = []
    for p in range(patients):
        n_visits = rng.choice([1, 1, 2, 3, 4])
        profile = {
            "gender": rng.choice(["F", "M"]),
            "age": rng.randint(20, 95),
            "insurance": rng.choice(["Medicare", "Private", "Medicaid"]),
            "language": rng.choice(["ENGL", UNKNOWN]),
            "religion": rng.choice(["CATHOLIC", "JEWISH", UNKNOWN]),
            "marital_status": rng.choice(["MARRIED", "SINGLE"]),
            "ethnicity": rng.choice(["WHITE", "BLACK/AFRICAN AMERICAN"]),
        }
        split = (
            "train" if p < int(patients * 0.7) else ("val" if p < int(patients * 0.85) else "test")
        )
        t0 = datetime(2150, 1, 1) + timedelta(days=rng.randint(0, 3000))
        for v in range(n_visits):
            d = rng.sample(range(len(dx)), rng.randint(1, 5))
            m = sorted({drugs[i % len(drugs)] for i in d} | {drugs[rng.randrange(len(drugs))]})
            rows.append(
                {
                    "patient_id": str(10000 + p),
                    "hadm_id": str(100000 + p * 10 + v),
                    "visit_index": v,
                    "admittime": t0 + timedelta(days=90 * v),
                    "diagnoses": [dx[i] for i in d],
                    "procedures": rng.sample(px, rng.randint(1, 3)),
                    "drugs": m,
                    **profile,
                    "split": split,
                }
            )
    visits = pl.DataFrame(rows)
    vocab = {
        "diagnoses": Vocab(dx, [f"diagnosis {c}" for c in dx]),
        "procedures": Vocab(px, [f"procedure {c}" for c in px]),
        "drugs": Vocab(drugs, [f"drug class {c}" for c in drugs]),
    }
    profile_vocab = {}
    for f in PROFILE_FIELDS:
        values = visits[f].to_list()
        if f == "age":
            values = [age_bucket(a) for a in values]
        profile_vocab[f] = sorted(set(values) | {UNKNOWN})
    pairs = [(drugs[0], drugs[1]), (drugs[2], drugs[5])]
    with atomic_dir(out) as tmp:
        write_dataset(
            tmp,
            visits,
            vocab,
            profile_vocab,
            pairs,
            "test fixture",
            source="fixture",
            config={"seed": seed},
            stats={"patients": patients},
        )
    return out


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir):
    from leader.data.dataset import Dataset

    return Dataset.load(tiny_data_dir)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """24 patients, one copy per test module (the teacher's modules may write next to it)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "small", patients=24)


@pytest.fixture(scope="module")
def small(small_dir):
    from leader.data.dataset import Dataset

    return Dataset.load(small_dir)


@pytest.fixture(scope="session")
def bundles(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """``popular``, ``repeat-last`` and ``ddi`` bundles of the tiny cohort (see helpers)."""
    from helpers import make_bundles

    return make_bundles(tiny_data, tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def rec(bundles):
    """The ``ddi`` bundle loaded (a popular model whose top two classes interact)."""
    import leader

    return leader.load(bundles["ddi"])


@pytest.fixture(scope="module")
def client(rec):
    """The REST app of ``rec`` with default settings, called as a loopback client."""
    from fastapi.testclient import TestClient

    from leader.serve import ServeSettings, create_app

    return TestClient(create_app(rec, ServeSettings()), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Hugging Face model directory (the tiny Llama and its tokenizer), as a user's would be."""
    from leader.llm import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("llm") / "tiny-llama"
    tiny_model(hidden=64, layers=3).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
