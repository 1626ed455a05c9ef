"""Experiment: does what a teacher reads in the code *titles* help the student another way?

Feature distillation has not helped (BENCHMARKS.md, Student (e)): every smollm2 teacher scores
below the student it should teach. A third of the test diagnoses of the converged teacher's
cohort were seen at most three times in training, and the student knows such a code only through
its own few visits and its ICD category, while the teacher reads its title. This script gives the
student each code's title as a fixed vector, several ways, and trains the undistilled student
(`leader distill --alpha 0 --beta 0`, ``--epochs``, default 50, lr 3e-3) with and without them:

- ``teacher``: the title ("Diagnosis: <long title>") through the fine-tuned teacher's backbone
  (LoRA included), mean-pooled over its tokens;
- ``priors``: the teacher's own drug logits for the title read alone ("what would you give for
  this diagnosis?"), centred per drug over the vocabulary (or, ``--prior-top K``, a 1 for the K
  drugs it scores highest); the wide path adds their sum over the visit's codes times one
  learned weight per drug (the place ``wide`` only);
- ``words``: TF-IDF over the title's words (words in at least two titles), no model at all: the
  control that says whether the LLM adds anything over the words themselves;
- ``wordset``: which of those words each title holds (1 or 0, no weighting, no reduction): under
  the wide path's L1 each word can get a few drug logits of its own, as a keyword would;
- ``keywords``: which of the synthetic generators' own title rules (``KEYWORD_DRUGS`` of the
  additive model, ``CONDITIONS`` of ``clinical``) each diagnosis title matches, one column per
  rule: a reader that knows exactly what the generator reads in a title. Its gain is the ceiling
  of what any title reader, a teacher included, can pass to the student on this synthetic data.

The ``teacher`` and ``words`` tables are centred, reduced to their top ``--rank`` principal
components, whitened and scaled to unit row norm; the others are used as they are. A learned
projection adds a table to the deep path's code embeddings (``deep``), a zero-initialised one to
the wide path's per-code logits (``wide``, under the wide path's penalty), or both. The tables
ride along as buffers: the bundles this script writes are for its metrics only (a plain `leader`
cannot load them).

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
from leader.models.teacher import pool, position_ids
from leader.pipelines import fit_model

KINDS = student_module.KINDS
LABEL = {"diagnoses": "Diagnosis", "procedures": "Procedure", "drugs": "Medication class"}
SOURCES = ("teacher", "priors", "words", "wordset", "keywords")
PLACES = {"deep": ("deep",), "wide": ("wide",), "both": ("deep", "wide")}


def teacher_vectors(teacher_dir: Path, data: Dataset, batch: int = 64) -> dict[str, torch.Tensor]:
    """Each vocabulary code's title through the teacher, two readings in one pass: its backbone's
    state mean-pooled ([V, H], key ``<kind>``) and the teacher's own drug logits for the title
    alone, pooled as it was trained ([V, drugs], key ``<kind>.logits``)."""
    teacher = load(teacher_dir).model
    tokenizer, module = teacher.task().tokenizer, teacher.module.eval()
    out = {}
    for kind in KINDS:
        titles = data.schema.vocab[kind].titles
        texts = [f"{LABEL[kind]}: {t}" for t in titles]
        states, logits = [], []
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start : start + batch], padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = module.backbone(input_ids=enc["input_ids"],
                                         attention_mask=enc["attention_mask"],
                                         position_ids=position_ids(enc["attention_mask"]),
                                         use_cache=False).last_hidden_state
                trained = pool(hidden, enc["attention_mask"], module.pooling)
                states.append(pool(hidden, enc["attention_mask"], "mean"))
                logits.append(module.drug_layer(trained))
        out[kind] = torch.cat(states).contiguous()
        out[f"{kind}.logits"] = torch.cat(logits).contiguous()
    return out


def title_priors(logits: torch.Tensor, top: int = 0) -> torch.Tensor:
    """The teacher's title-alone logits centred per drug over the vocabulary ([V, drugs]), or
    with ``top`` > 0 a 1 for each title's ``top`` highest-scoring drugs (after centring) and 0
    elsewhere; the padding id's zero row first."""
    centred = logits - logits.mean(0)
    if top > 0:
        picked = centred.topk(min(top, centred.shape[1]), dim=1).indices
        centred = torch.zeros_like(centred).scatter_(1, picked, 1.0)
    return torch.cat([torch.zeros(1, centred.shape[1]), centred])


def print_keyword_ranks(logits: torch.Tensor, data: Dataset) -> None:
    """Has the teacher learnt the generator's title rules? Per ``KEYWORD_DRUGS`` rule with a
    matching diagnosis title: where the rule's drugs rank among the teacher's centred logits for
    those titles (0 = top, 0.5 = chance)."""
    from leader.data.synth_model import KEYWORD_DRUGS

    centred = logits - logits.mean(0)
    order = centred.argsort(dim=1, descending=True).argsort(dim=1).float() / centred.shape[1]
    hits = rule_hits(data)  # its first columns are KEYWORD_DRUGS, in order
    drugs = data.schema.vocab["drugs"].index
    ranks = {}
    for k, (pattern, targets) in enumerate(KEYWORD_DRUGS):
        hit = hits[:, k].nonzero().squeeze(1)
        cols = [drugs[t] for t in targets if t in drugs]
        if len(hit) and cols:
            ranks[pattern] = order[hit][:, cols].mean().item()
    for pattern, r in ranks.items():
        print(f"keyword rank {r:.3f}  {pattern}")
    print(f"keyword rank, mean over {len(ranks)} rules: {statistics.mean(ranks.values()):.3f}")


def word_vectors(data: Dataset, binary: bool = False) -> dict[str, torch.Tensor]:
    """TF-IDF over each title's words (words of at least two titles), rows of unit norm; or,
    ``binary``, 1 where the title holds the word (with the padding id's zero row first)."""
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
        if binary:
            out[kind] = torch.cat([torch.zeros(1, m.shape[1]), (m > 0).float()])
        else:
            out[kind] = m / m.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return out


def rule_hits(data: Dataset) -> torch.Tensor:
    """[diagnosis codes, rules]: 1 where the code's title matches one of the generators' title
    rules (``KEYWORD_DRUGS`` of the additive model, then ``CONDITIONS`` of ``clinical``)."""
    from leader.data.synth_clinical import CONDITIONS
    from leader.data.synth_model import KEYWORD_DRUGS

    rules = [re.compile(p) for p, _ in KEYWORD_DRUGS] + [re.compile(p) for p, _ in
                                                          CONDITIONS.values()]
    titles = [t.lower() for t in data.schema.vocab["diagnoses"].titles]
    return torch.tensor([[float(r.search(t) is not None) for r in rules] for t in titles])


def keyword_vectors(data: Dataset) -> dict[str, torch.Tensor]:
    """:func:`rule_hits` after the padding id's zero row; procedures and drug classes get no
    rule (one all-zero column)."""
    hits = rule_hits(data)
    out = {k: torch.zeros(len(data.schema.vocab[k]) + 1, 1) for k in KINDS}
    out["diagnoses"] = torch.cat([torch.zeros(1, hits.shape[1]), hits])
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


class Diagonal(nn.Module):
    """x -> x * w, w per column, starting at zero."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class WithTitles(nn.Module):
    """An embedding (or embedding bag) plus a learned projection of each code's title vector."""

    def __init__(self, inner: nn.Module, table: torch.Tensor, zero: bool, diagonal: bool = False):
        super().__init__()
        self.inner = inner
        self.register_buffer("table", table, persistent=False)
        if diagonal:  # the table is already per drug: one learned weight per drug
            self.proj = Diagonal(table.shape[1])
        else:
            self.proj = nn.Linear(table.shape[1], inner.weight.shape[1], bias=False)
            init = nn.init.zeros_ if zero else (lambda w: nn.init.normal_(w, std=0.02))
            init(self.proj.weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, ids: torch.Tensor, per_sample_weights: torch.Tensor | None = None):
        if isinstance(self.inner, nn.EmbeddingBag):  # the wide path: a sum over the set
            bag = F.embedding_bag(ids, self.table, mode="sum",
                                  per_sample_weights=per_sample_weights, padding_idx=0)
            return self.inner(ids, per_sample_weights=per_sample_weights) + self.proj(bag)
        return self.inner(ids) + self.proj(self.table[ids])


def add_titles(tables: dict[str, torch.Tensor] | None, places: tuple[str, ...],
               per_drug: bool = False) -> Callable:
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
                diagonal = tables[kind].shape[1] == codes[kind].weight.shape[1] and per_drug
                codes[kind] = WithTitles(codes[kind], tables[kind], zero=True, diagonal=diagonal)

    student_module.Student.build = with_titles
    return build


def train(data: Path, out: Path, seed: int, epochs: int = 50) -> dict[str, float]:
    config = {"alpha": 0.0, "beta": 0.0, "train": {"epochs": epochs, "lr": 3e-3, "seed": seed}}
    result = fit_model("student", data, out, config, progress=False, force=True)
    m = result.metrics
    return {"val": m["val"]["prauc"], "prauc": m["test"]["prauc"], "jaccard": m["test"]["jaccard"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, help="fine-tuned teacher (source `teacher`)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50, help="student epochs (early stopping)")
    parser.add_argument("--places", nargs="+", default=["both", "wide"], choices=tuple(PLACES))
    parser.add_argument("--prior-top", type=int, default=0,
                        help="priors: 1 for the K drugs each title scores highest, 0 elsewhere "
                        "(0: the centred logits themselves)")
    parser.add_argument("--sources", nargs="+", default=["teacher", "words"], choices=SOURCES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    data = Dataset.load(args.data)
    raw = {}
    if {"teacher", "priors"} & set(args.sources):
        if args.teacher is None:
            parser.error("the sources `teacher` and `priors` need --teacher")
        cached = args.work / "teacher-vectors.safetensors"
        if not cached.is_file():
            started = time.perf_counter()
            save_file(teacher_vectors(args.teacher, data), str(cached))
            print(f"teacher vectors: {time.perf_counter() - started:.0f} s", flush=True)
        vectors = load_file(str(cached))
        raw["teacher"] = {k: vectors[k] for k in KINDS}
        if "priors" in args.sources:  # centred per drug: what the title adds to a drug's odds
            priors = {k: title_priors(vectors[f"{k}.logits"], args.prior_top) for k in KINDS}
            print_keyword_ranks(vectors["diagnoses.logits"], data)
    if "teacher" not in args.sources:
        raw.pop("teacher", None)
    if "words" in args.sources:
        raw["words"] = word_vectors(data)
    tables = {name: {k: whitened(v[k], args.rank) for k in KINDS} for name, v in raw.items()}
    # kept as they are: one column per word or rule, no mixing
    if "wordset" in args.sources:
        tables["wordset"] = word_vectors(data, binary=True)
    if "keywords" in args.sources:
        tables["keywords"] = keyword_vectors(data)
    if "priors" in args.sources:
        tables["priors"] = priors
    variants = [("none", None, ())] + [
        (f"{name}-{place}", tables[name], PLACES[place])
        for name in tables for place in args.places
    ]
    results: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(dict)
    for seed in args.seeds:
        for name, table, places in variants:
            original = add_titles(table, places, per_drug=name.startswith("priors"))
            try:
                results[name][seed] = train(args.data, args.work / f"{name}-{seed}", seed,
                                            args.epochs)
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
