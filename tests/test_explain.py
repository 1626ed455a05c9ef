"""Explanations: occlusion on a hand-computed model, exact logreg contributions, one model call."""

from __future__ import annotations

import numpy as np
import torch
from pytest import approx

from leader.data.samples import Sample, Visit
from leader.explain import explain, input_features, occlusion, without
from leader.models.base import model_class


class Additive:
    """p(drug j) = 0.05 + 0.4·[dx0] + 0.2·[px0] + 0.1·[earlier drug d3] + 0.15·[gender F] for
    j = 0, and 0.05 for every other class: every occlusion delta is known by hand."""

    def __init__(self, schema):
        self.schema = schema
        self.calls = 0

    def predict_proba(self, samples):
        self.calls += 1
        s = self.schema
        dx0, px0 = s.vocab["diagnoses"].codes[0], s.vocab["procedures"].codes[0]
        d3 = s.drugs.codes[3]
        out = np.full((len(samples), len(s.drugs)), 0.05)
        for i, x in enumerate(samples):
            earlier = {c for v in x.history for c in v.drugs}
            out[i, 0] += 0.4 * (dx0 in x.current.diagnoses) + 0.2 * (px0 in x.current.procedures)
            out[i, 0] += 0.1 * (d3 in earlier) + 0.15 * (x.profile.get("gender") == "F")
        return out


def patient(schema) -> Sample:
    dx, px, drugs = (schema.vocab[k].codes for k in ("diagnoses", "procedures", "drugs"))
    return Sample(
        "p/1", "p",
        (Visit((dx[5],), (), (drugs[3], drugs[4])), Visit((dx[0], dx[1], "icd9:UNSEEN"), (px[0],))),
        {"gender": "F", "age": 70, "religion": "unknown"},
    )


def test_occlusion_matches_hand_computed_deltas(tiny_data):
    schema = tiny_data.schema
    model, sample = Additive(schema), patient(schema)
    dx, px, drugs = (schema.vocab[k].codes for k in ("diagnoses", "procedures", "drugs"))
    feats = input_features(sample, schema)
    assert feats == [("diagnoses", dx[0]), ("diagnoses", dx[1]), ("procedures", px[0]),
                     ("drugs", drugs[3]), ("drugs", drugs[4]), ("profile", "gender=F"),
                     ("profile", "age=70")]  # unknown codes and unknown profile values left out
    assert without(sample, ("drugs", drugs[3])).history[0].drugs == (drugs[4],)
    probs, [(names, deltas)] = occlusion(model, [sample])
    assert model.calls == 1  # the patient and all 7 occluded copies in one call
    np.testing.assert_allclose(probs[0, :2], [0.05 + 0.4 + 0.2 + 0.1 + 0.15, 0.05])
    assert names == feats
    np.testing.assert_allclose(deltas[:, 0], [0.4, 0.0, 0.2, 0.1, 0.0, 0.15, 0.0], atol=1e-12)
    np.testing.assert_allclose(deltas[:, 1:], 0.0, atol=1e-12)

    [out] = explain(model, [sample], [[drugs[0], drugs[1]]], top=3)
    assert out["method"] == "occlusion" and out["unit"] == "probability"
    reasons = out["drugs"][drugs[0]]
    assert [(r["code"], r["contribution"]) for r in reasons] == [
        (dx[0], 0.4), (px[0], 0.2), ("gender=F", 0.15)]
    assert reasons[0]["title"] == schema.vocab["diagnoses"].title(dx[0])
    assert out["drugs"][drugs[1]] == []  # nothing raises a flat class
    assert explain(model, [sample], [[drugs[0]]]) == explain(model, [sample], [[drugs[0]]])


def test_logreg_exact_contributions_are_weight_times_input(tiny_data):
    schema = tiny_data.schema
    model = model_class("logreg")(schema)
    n_in = len(model.feature_names())
    weight = torch.zeros(len(schema.drugs), n_in)
    names = model.feature_names()
    dx, px, drugs = (schema.vocab[k].codes for k in ("diagnoses", "procedures", "drugs"))
    weight[2, names.index(("diagnoses", dx[1]))] = 1.5
    weight[2, names.index(("procedures", px[0]))] = -0.7
    weight[2, names.index(("drugs", drugs[4]))] = 0.25  # the previous visit's drug
    weight[2, names.index(("profile", "gender=F"))] = 0.5
    model.weight, model.bias = weight, torch.full((len(schema.drugs),), -1.0)
    sample = patient(schema)
    [(feats, contrib)] = model.explain_contributions([sample])
    got = dict(zip(feats, contrib[:, 2].tolist(), strict=True))
    assert got[("diagnoses", dx[1])] == 1.5 and got[("procedures", px[0])] == approx(-0.7)
    assert got[("drugs", drugs[4])] == 0.25 and got[("profile", "gender=F")] == 0.5
    # the contributions and the bias add up to the model's log-odds
    logit = np.log(model.predict_proba([sample])[0, 2] / (1 - model.predict_proba([sample])[0, 2]))
    assert abs(sum(got.values()) - 1.0 - logit) < 1e-5
    [out] = explain(model, [sample], [[drugs[2]]])
    assert out["method"] == "exact" and out["unit"] == "log-odds"
    assert [r["code"] for r in out["drugs"][drugs[2]]] == [dx[1], "gender=F", drugs[4]]
