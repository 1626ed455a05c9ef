"""Experiment: does what a teacher reads in the code *titles* help the student another way?

Feature distillation has not helped (BENCHMARKS.md, Student (e)): every smollm2 teacher scores
below the student it should teach. A third of the test diagnoses of the converged teacher's
cohort were seen at most three times in training, and the student knows such a code only through
its own few visits and its ICD category, while the teacher reads its title. This script gives the
student each code's title as a fixed vector, two ways, and trains the undistilled student
(`leader distill --alpha 0 --beta 0`, epochs 50, lr 3e-3) with and without them:

- ``teacher``: the title ("Diagnosis: <long title>") through the fine-tuned teacher's backbone
  (LoRA included), mean-pooled over its tokens;
- ``words``: TF-IDF over the title's words (words in at least two titles), no model at all: the
  control that says whether the LLM adds anything over the words themselves.

Each vector table is centred, reduced to its top ``--rank`` principal components, whitened and
scaled to unit row norm. A learned projection adds it to the deep path's code embeddings
(``deep``), a zero-initialised one to the wide path's per-code logits (``wide``, under the wide
path's L2), or both. The tables ride along as buffers: the bundles this script writes are for
its metrics only (a plain `leader` cannot load them).

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/title_vectors.py \\
        --data /tmp/t10/data --teacher /tmp/t10/teacher-all6 --work /tmp/titles --seeds 42 1 2 3 4

Prints validation PRAUC (the choice) and test PRAUC / Jaccard at each bundle's tuned threshold,
per seed, and the mean gain over seeds against the student without title vectors.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import leader.models.student as student_module
from leader.bundle import load
from leader.data.dataset import Dataset
from leader.pipelines import fit_model

KINDS = student_module.KINDS
LABEL = {"diagnoses": "Diagnosis", "procedures": "Procedure", "drugs": "Medication class"}
PLACES = {"deep": ("deep",), "wide": ("wide",), "both": ("deep", "wide")}


def teacher_vectors(teacher_dir: Path, data: Dataset, batch: int = 64) -> dict[str, torch.Tensor]:
    """Each vocabulary code's title through the teacher's backbone, mean-pooled: [V, H]."""
    teacher = load(teacher_dir).model
    tokenizer, module = teacher.task().tokenizer, teacher.module.eval()
    module.pooling = "mean"
    out = {}
    for kind in KINDS:
        titles = data.schema.vocab[kind].titles
        texts = [f"{LABEL[kind]}: {t}" for t in titles]
        rows = []
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start : start + batch], padding=True, return_tensors="pt")
            with torch.no_grad():
                rows.append(module(enc["input_ids"], enc["attention_mask"])[1])
        out[kind] = torch.cat(rows).contiguous()
    return out


def word_vectors(data: Dataset) -> dict[str, torch.Tensor]:
    """TF-IDF over each title's words (words of at least two titles), rows of unit norm."""
    out = {}
    for kind in KINDS:
        docs = [re.findall(r"[a-z]+", t.lower()) for t in data.schema.vocab[kind].titles]
        df = collections.Counter(w for d in docs for w in set(d))
        column = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c >= 2))}
        m = torch.zeros(len(docs), max(len(column), 1))
        for i, words in enumerate(docs):
            for w in words:
                if w in column:
                    m[i, column[w]] += math.log(len(docs) / df[w])
        out[kind] = m / m.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return out


def whitened(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Top principal components, unit variance each, rows scaled by 1/sqrt(rank); row 0 of the
    result is the padding id's zero vector."""
    x = x.float() - x.float().mean(0)
    rank = min(rank, *x.shape)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    z = x @ v[:rank].T
    z = z / z.std(0).clamp(min=1e-6) / math.sqrt(rank)
    return torch.cat([torch.zeros(1, rank), z])


class WithTitles(nn.Module):
    """An embedding (or embedding bag) plus a learned projection of each code's title vector."""

    def __init__(self, inner: nn.Module, table: torch.Tensor, zero: bool):
        super().__init__()
        self.inner = inner
        self.register_buffer("table", table, persistent=False)
        self.proj = nn.Linear(table.shape[1], inner.weight.shape[1], bias=False)
        nn.init.zeros_(self.proj.weight) if zero else nn.init.normal_(self.proj.weight, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, ids: torch.Tensor, per_sample_weights: torch.Tensor | None = None):
        if isinstance(self.inner, nn.EmbeddingBag):  # the wide path: a sum over the set
            bag = F.embedding_bag(ids, self.table, mode="sum",
                                  per_sample_weights=per_sample_weights, padding_idx=0)
            return self.inner(ids, per_sample_weights=per_sample_weights) + self.proj(bag)
        return self.inner(ids) + self.proj(self.table[ids])


def add_titles(tables: dict[str, torch.Tensor] | None, places: tuple[str, ...]) -> Callable:
    """Make Student.build wrap the code embeddings of the chosen paths (None: leave them);
    returns the original build, to put back."""
    build = student_module.Student.__dict__["build"]

    def with_titles(self) -> None:
        build(self)
        if tables is None:
            return
        for kind in KINDS:
            if "deep" in places:
                sets = self.module.sets[kind]
                sets.embed = WithTitles(sets.embed, tables[kind], zero=False)
            if "wide" in places and self.module.wide is not None:
                codes = self.module.wide.codes
                codes[kind] = WithTitles(codes[kind], tables[kind], zero=True)

    student_module.Student.build = with_titles
    return build


def train(data: Path, out: Path, seed: int) -> dict[str, float]:
    config = {"alpha": 0.0, "beta": 0.0, "train": {"epochs": 50, "lr": 3e-3, "seed": seed}}
    result = fit_model("student", data, out, config, progress=False, force=True)
    m = result.metrics
    return {"val": m["val"]["prauc"], "prauc": m["test"]["prauc"], "jaccard": m["test"]["jaccard"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--places", nargs="+", default=["both", "wide"], choices=tuple(PLACES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    data = Dataset.load(args.data)
    cached = args.work / "teacher-vectors.safetensors"
    if not cached.is_file():
        started = time.perf_counter()
        save_file(teacher_vectors(args.teacher, data), str(cached))
        print(f"teacher vectors: {time.perf_counter() - started:.0f} s", flush=True)
    raw = {"teacher": load_file(str(cached)), "words": word_vectors(data)}
    tables = {name: {k: whitened(v[k], args.rank) for k in KINDS} for name, v in raw.items()}
    variants = [("none", None, ())] + [
        (f"{name}-{place}", tables[name], PLACES[place])
        for name in tables for place in args.places
    ]
    results: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(dict)
    for seed in args.seeds:
        for name, table, places in variants:
            original = add_titles(table, places)
            try:
                results[name][seed] = train(args.data, args.work / f"{name}-{seed}", seed)
            finally:
                student_module.Student.build = original
            print(json.dumps({"variant": name, "seed": seed, **results[name][seed]}), flush=True)
    print("\n| variant | val PRAUC | test PRAUC | test Jaccard | Δ val | Δ test PRAUC "
          "| Δ Jaccard |")
    print("|---|---|---|---|---|---|---|")
    for name, by_seed in results.items():
        cells = []
        for key in ("val", "prauc", "jaccard"):
            values = [r[key] for r in by_seed.values()]
            cells.append(_mean_std(values))
        for key in ("val", "prauc", "jaccard"):
            gains = [r[key] - results["none"][s][key] for s, r in by_seed.items()]
            cells.append("–" if name == "none" else _mean_std(gains, signed=True))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(means ± std over seeds {args.seeds}; Δ: paired with the same seed)")


def _mean_std(values: list[float], signed: bool = False) -> str:
    fmt = "{:+.4f}" if signed else "{:.4f}"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {spread:.4f}"


if __name__ == "__main__":
    main()
