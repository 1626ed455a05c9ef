"""One-vs-rest logistic regression on code counts (the lineage's "LR" baseline).

Features of a visit: multi-hot of its diagnoses and procedures, of the previous visit's drugs
(empty on a first visit) and one-hot profile values. One L2-regularised logistic regression per
drug class (scikit-learn, liblinear, C = 1; ``penalty: l1`` for a sparse one); a class that is
always (or never) prescribed in training gets a constant score, its training frequency. The
coefficients are stored as tensors (safetensors), so prediction is a matrix product and no
pickled estimator is ever written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from leader.configs import Config, option
from leader.data.dataset import Dataset
from leader.data.samples import CodeEncoder, Sample
from leader.data.vocab import UNKNOWN
from leader.models.base import MedModel, register
from leader.progress import counter
from leader.train import FitContext


@dataclass
class LogRegConfig(Config):
    C: float = option(1.0, "Inverse regularisation strength.", gt=0)
    penalty: str = option("l2", "l2 (the lineage's LR) or l1 (sparse: each code moves few "
                          "drugs).", choices=("l1", "l2"))
    max_iter: int = option(200, "Solver iterations per drug class.", ge=1)
    threads: int | None = option(
        None, "Drug classes fitted at once with the l2 penalty, one thread each (default: the "
        "CPUs this process may use, at most 8; same result). l1 fits one at a time: its solver "
        "shuffles with a random generator that the whole process shares.",
        ge=1, identity=False)


@register
class LogReg(MedModel):
    name = "logreg"
    config_class = LogRegConfig

    def features(self, samples: Sequence[Sample]) -> sparse.csr_matrix:
        """[dx | px | previous drugs | profile one-hot] as a sparse 0/1 matrix."""
        enc = CodeEncoder(self.schema.vocab, self.schema.profile_vocab)
        offsets, start = {}, 0
        for kind in ("diagnoses", "procedures", "drugs"):
            offsets[kind], start = start, start + len(self.schema.vocab[kind])
        field_offsets = []
        for values in self.schema.profile_vocab.values():
            field_offsets.append(start)
            start += len(values) + 1  # + 1: a value outside the vocabulary
        rows, cols = [], []
        for i, s in enumerate(samples):
            prev = s.visits[-2].drugs if len(s.visits) > 1 else ()
            cur = s.current
            for kind, codes in (("diagnoses", cur.diagnoses), ("procedures", cur.procedures),
                                ("drugs", prev)):
                index = self.schema.vocab[kind].index
                for c in set(codes):
                    if c in index:
                        rows.append(i)
                        cols.append(offsets[kind] + index[c])
            for off, pid in zip(field_offsets, enc.profile_ids(s.profile), strict=True):
                rows.append(i)
                cols.append(off + pid)
        data = np.ones(len(rows), dtype=np.float32)
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(samples), start))

    def feature_names(self) -> list[tuple[str, str]]:
        """(kind, code) of each column of :meth:`features`, as :mod:`leader.explain` names them."""
        names = [(kind, c) for kind in ("diagnoses", "procedures", "drugs")
                 for c in self.schema.vocab[kind].codes]
        for field, values in self.schema.profile_vocab.items():
            names.append(("profile", f"{field}={UNKNOWN}"))  # column 0: a value outside the vocab
            names += [("profile", f"{field}={v}") for v in values]
        return names

    def explain_contributions(
        self, samples: Sequence[Sample]
    ) -> list[tuple[list[tuple[str, str]], np.ndarray]]:
        """Exact log-odds share of every active input (weight × input), for leader.explain."""
        x = self.features(samples)
        names = self.feature_names()
        weight = self.weight.numpy().astype(np.float64)
        out = []
        for i in range(len(samples)):
            cols = x.indices[x.indptr[i] : x.indptr[i + 1]]
            cols = sorted(int(c) for c in cols if not names[c][1].endswith(f"={UNKNOWN}"))
            out.append(([names[c] for c in cols], weight[:, cols].T * x[i, cols].toarray().T))
        return out

    def fit(self, data: Dataset, context: FitContext | None = None) -> LogReg:
        from sklearn.linear_model import LogisticRegression

        train = data.samples("train")
        x = self.features(train)
        y = np.zeros((len(train), len(self.schema.drugs)), dtype=np.int8)
        for i, s in enumerate(train):
            for c in s.target:
                j = self.schema.drugs.index.get(c)
                if j is not None:
                    y[i, j] = 1
        weight = np.zeros((y.shape[1], x.shape[1]), dtype=np.float32)
        bias = np.zeros(y.shape[1], dtype=np.float32)

        def fit_class(j: int) -> None:
            rate = float(y[:, j].mean())
            if rate in (0.0, 1.0):  # one class only: a constant score
                bias[j] = np.log(max(rate, 1e-6) / max(1 - rate, 1e-6))
                return
            clf = LogisticRegression(
                C=self.config.C, l1_ratio=1.0 if self.config.penalty == "l1" else 0.0,
                solver="liblinear", max_iter=self.config.max_iter,
                random_state=0,  # its own seed: not numpy's global one, shared by the threads
            )
            clf.fit(x, y[:, j])
            weight[j], bias[j] = clf.coef_[0], clf.intercept_[0]

        # one class per thread: minutes at MIMIC-IV scale (200 classes, 160k visits)
        usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)  # not on macOS
        threads = 1 if self.config.penalty == "l1" else self.config.threads or min(8, usable)
        progress = context.progress if context is not None else False
        with counter("logreg classes", y.shape[1], progress) as advance, \
                ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(fit_class, range(y.shape[1])):
                advance(1)
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(bias)
        return self

    def build(self) -> None:
        self.weight, self.bias = torch.zeros(0, 0), torch.zeros(0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weight, self.bias = tensors["weight"], tensors["bias"]

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        logits = self.features(samples) @ self.weight.numpy().T + self.bias.numpy()
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
