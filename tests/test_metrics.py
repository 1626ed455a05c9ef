"""Metric values computed by hand, the edge cases, and reproducible resampling."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from leader.metrics import (
    average_precision,
    per_visit,
    predicted,
    resample_indices,
    resampled,
    search_threshold,
    summarize,
)


def test_hand_computed_visit():
    # truth {0, 1}; predicted {0, 2}: |P∩T| = 1, |P∪T| = 3
    v = per_visit(np.array([[1, 1, 0, 0]]), np.array([[0.9, 0.2, 0.6, 0.1]]))
    assert v["jaccard"][0] == pytest.approx(1 / 3)
    assert v["f1"][0] == pytest.approx(0.5)  # precision 1/2, recall 1/2
    # ranking 0 (hit), 2, 1 (hit), 3: precision at the hits 1 and 2/3
    assert v["prauc"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert v["n_pred"][0] == 2


def test_empty_prediction_and_empty_truth():
    y = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    s = np.array([[0.4, 0.1, 0.2], [0.1, 0.2, 0.3], [0.9, 0.1, 0.1]])
    v = per_visit(y, s)
    # nothing predicted, one true drug: 0, no division by zero
    assert v["jaccard"][0] == 0.0 and v["f1"][0] == 0.0 and v["precision"][0] == 0.0
    # nothing to find and nothing predicted: a perfect visit
    assert v["jaccard"][1] == 1.0 and v["f1"][1] == 1.0
    # nothing to find, one predicted: 0
    assert v["jaccard"][2] == 0.0 and v["f1"][2] == 0.0
    # visits without a true drug have no PRAUC and are left out of its mean
    assert np.isnan(v["prauc"][1]) and np.isnan(v["prauc"][2])
    m = summarize(v)
    assert m["prauc"] == pytest.approx(1.0)  # visit 0: its drug ranked first (0.4)
    assert m["avg_meds"] == pytest.approx(1 / 3)
    assert m["ddi_rate"] == 0.0  # no visit with two predicted drugs


def test_single_drug_vocabulary():
    v = per_visit(np.array([[1], [0]]), np.array([[0.7], [0.7]]))
    assert list(v["jaccard"]) == [1.0, 0.0]
    assert v["prauc"][0] == 1.0 and np.isnan(v["prauc"][1])


def test_ties_in_prauc_are_grouped():
    y, s = np.array([[1, 0, 1, 0]]), np.array([[0.5, 0.5, 0.5, 0.1]])
    # one threshold for the three tied scores: precision 2/3 at recall 1
    assert average_precision(y, s)[0] == pytest.approx(2 / 3)
    assert average_precision(y, s)[0] == pytest.approx(average_precision_score(y[0], s[0]))
    rng = np.random.default_rng(1)
    for _ in range(20):
        yy = rng.integers(0, 2, 12)
        yy[0] = 1
        ss = rng.integers(0, 4, 12) / 4  # many ties
        assert average_precision(yy[None], ss[None])[0] == pytest.approx(
            average_precision_score(yy, ss)
        )


def test_ddi_rate_is_pooled_over_visits():
    ddi = np.zeros((4, 4))
    ddi[0, 1] = ddi[1, 0] = ddi[1, 2] = ddi[2, 1] = 1
    y = np.ones((3, 4))
    s = np.array([[1, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]], dtype=float)
    v = per_visit(y, s, ddi)
    assert list(v["ddi_pairs"]) == [2, 0, 0] and list(v["all_pairs"]) == [3, 1, 0]
    # pooled: 2 interacting of 4 pairs (a mean of per-visit rates would give 1/3)
    assert summarize(v)["ddi_rate"] == pytest.approx(0.5)
    assert summarize(v, np.array([1, 2]))["ddi_rate"] == 0.0


def test_resampling_reproducible_and_with_replacement():
    a = resample_indices(50, rounds=10, frac=0.8, seed=3)
    b = resample_indices(50, rounds=10, frac=0.8, seed=3)
    c = resample_indices(50, rounds=10, frac=0.8, seed=4)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))
    assert all(len(x) == 40 for x in a)
    assert any(len(set(x.tolist())) < len(x) for x in a)  # drawn with replacement


def test_resampled_summary():
    y = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    s = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    v = per_visit(y, s)
    draws = [np.array([0, 0]), np.array([1, 1]), np.array([0, 2])]
    out = resampled(v, draws)
    # Jaccard per draw: 1, 0, 1 → mean 2/3, sample std sqrt(1/3)
    assert out["jaccard"]["mean"] == pytest.approx(2 / 3)
    assert out["jaccard"]["std"] == pytest.approx(np.sqrt(1 / 3))
    lo, hi = out["jaccard"]["ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    assert set(out) == {"jaccard", "f1", "prauc", "ddi_rate", "avg_meds"}


def test_search_threshold_picks_best_mean_f1():
    y = np.array([[1, 1, 0], [1, 0, 0]])
    s = np.array([[0.35, 0.32, 0.1], [0.33, 0.1, 0.05]])
    t, f1 = search_threshold(y, s)
    assert f1 == 1.0 and 0.1 < t <= 0.3  # every grid point in (0.1, 0.3] is perfect
    assert t == 0.3  # ties go to the threshold nearest 0.5
    # the mean F1 by hand: at 0.3 {a,b,c} vs {a,b} -> 0.8; at 0.5 {a} vs {a,b} -> 2/3
    y2 = np.array([[1, 1, 0, 0]])
    s2 = np.array([[0.6, 0.4, 0.35, 0.1]])
    assert search_threshold(y2, s2, grid=(0.3, 0.5)) == (0.3, pytest.approx(0.8))


def test_set_size_cap_keeps_the_highest_scores():
    s = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.6, 0.9, 0.95]])
    assert predicted(s, 0.5).sum(1).tolist() == [3, 3]
    capped = predicted(s, 0.5, max_drugs=2)
    assert capped.tolist() == [[True, True, False, False], [False, False, True, True]]
    y = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    t, f1 = search_threshold(y, s, grid=(0.5,), max_drugs=2)
    assert (t, f1) == (0.5, 1.0)
