"""Per-visit metrics of the medication-recommendation lineage, and seeded resampling.

Conventions (stated with every result, tested with hand-computed values):

- Jaccard and F1 of the predicted set P (scores >= threshold) against the true set T. When both
  are empty the visit scores 1 (nothing to find, nothing wrongly predicted); when only one is
  empty it scores 0. Precision of an empty prediction is 0; recall with empty truth is 0.
- PRAUC is the average precision of the scores (sklearn's step-wise definition, no
  interpolation). A visit with no true drug has no PRAUC and is left out of that mean.
- DDI rate is pooled as in GAMENet/SafeDrug: interacting predicted pairs over all predicted
  pairs, summed over the visits; 0 when no visit has two predicted drugs.
- #MED is the mean size of the predicted set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("jaccard", "prauc", "f1", "ddi_rate", "avg_meds")  # the lineage's table order
METRIC_LABELS = {"jaccard": "Jaccard", "prauc": "PRAUC", "f1": "F1", "ddi_rate": "DDI rate",
                 "avg_meds": "#MED"}

# Written into every EVAL.json so a number never travels without the rules that made it.
CONVENTIONS = {
    "jaccard_f1_both_empty": 1.0,
    "jaccard_f1_one_empty": 0.0,
    "prauc": "average precision of the scores per visit (step-wise, ties grouped); "
    "visits without a true drug are left out of the mean",
    "ddi_rate": "interacting predicted pairs / all predicted pairs, pooled over the visits "
    "(GAMENet/SafeDrug); 0 when no visit has two predicted drugs",
    "avg_meds": "mean size of the predicted set",
    "prediction": "a drug is predicted when its score >= threshold",
}
# The validation grid of the tuned threshold: coarse enough to not overfit a small validation set.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
THRESHOLD_SEARCH = "tuned on the val split: best mean F1 over the grid 0.05..0.95 step 0.05"


def predicted(scores: np.ndarray, threshold: float, max_drugs: int | None = None) -> np.ndarray:
    """The predicted sets as a boolean matrix: score >= threshold, at most the ``max_drugs``
    highest scores per visit when a cap is given."""
    scores = np.asarray(scores)
    pred = scores >= threshold
    if max_drugs is not None and scores.shape[1] > max_drugs:
        top = np.zeros_like(pred)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :max_drugs]
        np.put_along_axis(top, order, True, axis=1)
        pred &= top
    return pred


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision per row; NaN for rows without a positive."""
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(y_true.shape[0], np.nan)
    for i in range(y_true.shape[0]):
        t = y_true[i]
        n_pos = t.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-scores[i], kind="mergesort")
        s, tt = scores[i][order], t[order]
        # group tied scores: precision/recall only change at distinct thresholds
        distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
        tp = np.cumsum(tt)[distinct]
        fp = (distinct + 1) - tp
        precision = tp / (tp + fp)
        recall = tp / n_pos
        out[i] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def per_visit(
    y_true: np.ndarray,
    scores: np.ndarray,
    ddi: np.ndarray | None = None,
    threshold: float = 0.5,
    max_drugs: int | None = None,
) -> dict[str, np.ndarray]:
    """Everything needed to average or resample the metrics, one value per visit."""
    y_true = np.asarray(y_true, dtype=bool)
    pred = predicted(scores, threshold, max_drugs)
    inter = (pred & y_true).sum(1).astype(np.float64)
    union = (pred | y_true).sum(1).astype(np.float64)
    n_pred = pred.sum(1).astype(np.float64)
    n_true = y_true.sum(1).astype(np.float64)
    both_empty = union == 0
    jaccard = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    precision = np.where(n_pred > 0, inter / np.maximum(n_pred, 1), 0.0)
    recall = np.where(n_true > 0, inter / np.maximum(n_true, 1), 0.0)
    pr = precision + recall
    f1 = np.where(
        both_empty, 1.0, np.where(pr > 0, 2 * precision * recall / np.where(pr > 0, pr, 1), 0.0)
    )
    all_pairs = n_pred * (n_pred - 1) / 2
    if ddi is None:
        ddi_pairs = np.zeros_like(all_pairs)
    else:
        p = pred.astype(np.float32)
        ddi_pairs = np.einsum("ni,ij,nj->n", p, np.triu(np.asarray(ddi, dtype=np.float32), 1), p)
    return {
        "jaccard": jaccard,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "prauc": average_precision(y_true, scores),
        "n_pred": n_pred,
        "ddi_pairs": ddi_pairs.astype(np.float64),
        "all_pairs": all_pairs,
    }


def summarize(values: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    """Aggregate per-visit values (optionally a subset or resample ``idx``) into the metrics."""
    v = values if idx is None else {k: a[idx] for k, a in values.items()}
    prauc = v["prauc"][~np.isnan(v["prauc"])]
    pairs = v["all_pairs"].sum()
    n = len(v["jaccard"])
    return {
        "jaccard": float(v["jaccard"].mean()) if n else float("nan"),
        "f1": float(v["f1"].mean()) if n else float("nan"),
        "prauc": float(prauc.mean()) if len(prauc) else float("nan"),
        "ddi_rate": float(v["ddi_pairs"].sum() / pairs) if pairs > 0 else 0.0,
        "avg_meds": float(v["n_pred"].mean()) if n else float("nan"),
    }


def resample_indices(
    n: int, rounds: int = 10, frac: float = 0.8, seed: int = 0
) -> list[np.ndarray]:
    """Seeded resamples of ``frac`` of ``n`` visits drawn with replacement.

    The same seed gives the same resamples, so several models can be scored on identical draws.
    """
    rng = np.random.default_rng(seed)
    size = max(1, int(round(frac * n)))
    return [rng.integers(0, n, size=size) for _ in range(rounds)]


def per_round(values: dict[str, np.ndarray], draws: list[np.ndarray]) -> dict[str, list[float]]:
    """Every metric on every resample: two models scored on the same draws pair round by round."""
    rows = [summarize(values, idx) for idx in draws]
    return {m: [r[m] for r in rows] for m in METRICS}


def interval(a: np.ndarray | list[float]) -> dict[str, Any]:
    """Mean, std (ddof 1) and empirical 95% interval of per-round values."""
    a = np.asarray(a, dtype=np.float64)
    return {
        "mean": float(np.nanmean(a)),
        "std": float(np.nanstd(a, ddof=1)) if len(a) > 1 else 0.0,
        "ci95": [float(np.nanpercentile(a, 2.5)), float(np.nanpercentile(a, 97.5))],
    }


def resampled(
    values: dict[str, np.ndarray], draws: list[np.ndarray]
) -> dict[str, dict[str, float]]:
    """Mean, std and empirical 95% interval of every metric over the resamples."""
    return {m: interval(a) for m, a in per_round(values, draws).items()}


def search_threshold(
    y_true: np.ndarray,
    scores: np.ndarray,
    grid: tuple[float, ...] = THRESHOLD_GRID,
    max_drugs: int | None = None,
) -> tuple[float, float]:
    """The grid threshold with the best mean F1 (ties: the one nearest 0.5) and that F1.

    The same rule for every model, so no model gets a threshold hand-picked for it. Callers
    pass VALIDATION visits: a threshold tuned on the test split would flatter every model.
    """
    if len(y_true) == 0:
        raise ValueError("cannot tune a threshold on zero visits")
    y_true = np.asarray(y_true, dtype=bool)
    best = (-1.0, 0.0, 0.5)  # (f1, -distance to 0.5, threshold)
    for t in grid:
        pred = predicted(scores, t, max_drugs)
        inter, size = (pred & y_true).sum(1), pred.sum(1) + y_true.sum(1)
        f1 = float(np.where(size == 0, 1.0, 2 * inter / np.maximum(size, 1)).mean())
        best = max(best, (f1, -abs(t - 0.5), t))
    return best[2], best[0]
