"""Property tests: the metrics agree with scikit-learn and with each other on random visits."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score

from leader.metrics import average_precision, per_visit, summarize

visits = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 8).flatmap(
        lambda m: st.tuples(
            arrays(np.bool_, (n, m)),
            # scores on a coarse grid so that ties (and the 0.5 threshold) are exercised
            arrays(np.float64, (n, m), elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(visits)
def test_average_precision_matches_sklearn(case):
    truth, scores = case
    ours = average_precision(truth, scores)
    for i in range(len(truth)):
        if truth[i].any():
            assert np.isclose(ours[i], average_precision_score(truth[i], scores[i]))
        else:
            assert np.isnan(ours[i])


@settings(max_examples=200, deadline=None)
@given(visits)
def test_set_metrics_bounds_and_relations(case):
    truth, scores = case
    v = per_visit(truth, scores, ddi=np.ones((truth.shape[1],) * 2), threshold=0.5)
    assert ((0 <= v["jaccard"]) & (v["jaccard"] <= 1)).all()
    # F1 = 2J / (1 + J) for every visit, so F1 >= Jaccard
    assert np.allclose(v["f1"], 2 * v["jaccard"] / (1 + v["jaccard"]))
    # with every pair interacting, the pooled DDI rate is 1 whenever some visit has two drugs
    m = summarize(v)
    assert m["ddi_rate"] == (1.0 if v["all_pairs"].sum() > 0 else 0.0)
    assert m["avg_meds"] == (scores >= 0.5).sum(1).mean()
