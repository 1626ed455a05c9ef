"""Why a drug class is recommended: the input codes that raise its probability most.

Two methods behind one output:

* **occlusion** (every model): the probability of each class with one input removed (a current
  diagnosis or procedure, an earlier visit's drug, a profile field set to unknown), subtracted
  from the full patient's probability. All the occluded copies of all patients go through the
  model in ONE ``predict_proba`` call, so explaining costs one forward pass of a bigger batch,
  not one per code. The unit is a probability (0.12 = twelve points).
* **exact** (models that define ``explain_contributions(samples)``, e.g. ``logreg``): each
  input's additive share of the class's log-odds (weight × input). The unit is log-odds.

Both are deterministic; ties are broken by (kind, code), so the same patient always gets the
same explanation. An item of the output::

    {"kind": "diagnoses", "code": "icd9:4280", "title": "Congestive heart failure",
     "contribution": 0.21}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from leader.data.dataset import UNKNOWN, Schema
from leader.data.samples import Sample, Visit

KINDS = ("diagnoses", "procedures", "drugs", "profile")
UNITS = {"occlusion": "probability", "exact": "log-odds"}
DEFAULT_TOP = 5

Feature = tuple[str, str]  # (kind, code); for kind "profile" the code is "field=value"


def input_features(sample: Sample, schema: Schema) -> list[Feature]:
    """The inputs a model can see: known codes of the current visit, drugs of earlier visits,
    and profile fields with a value (unknown codes cannot move any model, so they are left out)."""
    vocab = schema.vocab
    out: list[Feature] = []
    for kind, codes in (
        ("diagnoses", sample.current.diagnoses),
        ("procedures", sample.current.procedures),
        ("drugs", [c for v in sample.history for c in v.drugs]),
    ):
        index = vocab[kind].index
        out += [(kind, c) for c in dict.fromkeys(codes) if c in index]
    for field in schema.profile_fields:
        value = sample.profile.get(field)
        if value is not None and str(value) != UNKNOWN:
            out.append(("profile", f"{field}={value}"))
    return out


def without(sample: Sample, feature: Feature) -> Sample:
    """``sample`` with one input removed (a profile field becomes unknown)."""
    kind, code = feature
    if kind == "profile":
        field = code.split("=", 1)[0]
        return replace(sample, profile={**sample.profile, field: None})
    visits = list(sample.visits)
    if kind == "drugs":
        visits[:-1] = [
            Visit(v.diagnoses, v.procedures, tuple(c for c in v.drugs if c != code))
            for v in visits[:-1]
        ]
    else:
        cur = visits[-1]
        kept = tuple(c for c in getattr(cur, kind) if c != code)
        visits[-1] = replace(cur, **{kind: kept})
    return replace(sample, visits=tuple(visits))


Found = list[tuple[list[Feature], np.ndarray]]  # per sample: features, [n_features, n_drugs]


def occlusion(
    model: Any, samples: Sequence[Sample], probs: np.ndarray | None = None
) -> tuple[np.ndarray, Found]:
    """The probabilities and, per sample, its features with the probability drop when each one
    is removed. ONE model call scores every occluded copy, and the samples themselves when
    ``probs`` is not given (a model call has a fixed cost that dwarfs a few more rows)."""
    feats = [input_features(s, model.schema) for s in samples]
    batch = [without(s, f) for s, fs in zip(samples, feats, strict=True) for f in fs]
    lead = list(samples) if probs is None else []
    scored = np.asarray(model.predict_proba(lead + batch), dtype=np.float64)
    if probs is None:
        probs, scored = scored[: len(samples)], scored[len(samples) :]
    probs = np.asarray(probs, dtype=np.float64)
    out, start = [], 0
    for i, fs in enumerate(feats):
        out.append((fs, probs[i][None, :] - scored[start : start + len(fs)]))
        start += len(fs)
    return probs, out


def contributions(
    model: Any, samples: Sequence[Sample], probs: np.ndarray | None = None
) -> tuple[np.ndarray, str, Found]:
    """The probabilities, the method, and the model's exact contributions when it has them,
    else occlusion's; one model call either way."""
    exact = getattr(model, "explain_contributions", None)
    if callable(exact):
        if probs is None:
            probs = np.asarray(model.predict_proba(samples), dtype=np.float64)
        return probs, "exact", exact(samples)
    probs, found = occlusion(model, samples, probs)
    return probs, "occlusion", found


def top_reasons(
    schema: Schema, features: list[Feature], deltas: np.ndarray, column: int, top: int
) -> list[dict]:
    """The ``top`` inputs that raise class ``column`` most (positive contributions only)."""
    values = deltas[:, column] if len(features) else np.zeros(0)
    ranked = sorted(
        (i for i in range(len(features)) if values[i] > 0),
        key=lambda i: (-round(float(values[i]), 9), features[i]),
    )
    return [
        {
            "kind": features[i][0],
            "code": features[i][1],
            "title": _title(schema, features[i]),
            "contribution": round(float(values[i]), 6),
        }
        for i in ranked[:top]
    ]


def _title(schema: Schema, feature: Feature) -> str:
    kind, code = feature
    if kind == "profile":
        return code.replace("_", " ").replace("=", ": ", 1)
    title = schema.vocab[kind].title(code)
    return f"{title} (earlier visit)" if kind == "drugs" else title


def reasons(
    schema: Schema,
    method: str,
    found: Found,
    classes: Sequence[Sequence[str]],
    top: int = DEFAULT_TOP,
) -> list[dict]:
    """For each sample, the reasons behind each of its ``classes`` (ATC3 codes)::

        {"method": "occlusion", "unit": "probability", "drugs": {code: [reason, ...]}}
    """
    index = schema.drugs.index
    return [
        {
            "method": method,
            "unit": UNITS[method],
            "drugs": {
                c: top_reasons(schema, feats, deltas, index[c], top) for c in wanted if c in index
            },
        }
        for (feats, deltas), wanted in zip(found, classes, strict=True)
    ]


def explain(
    model: Any,
    samples: Sequence[Sample],
    classes: Sequence[Sequence[str]],
    probs: np.ndarray | None = None,
    top: int = DEFAULT_TOP,
) -> list[dict]:
    """The reasons behind ``classes`` of each sample (see :func:`reasons`)."""
    _, method, found = contributions(model, samples, probs)
    return reasons(model.schema, method, found, classes, top)


def attach(
    results: list[dict], schema: Schema, method: str, found: Found, top: int = DEFAULT_TOP
) -> list[dict]:
    """Add ``"explanation"`` to recommendation outputs (see :mod:`leader.recommend`): the
    reasons behind each class in ``"recommended"``."""
    given = reasons(schema, method, found, [r["recommended"] for r in results], top)
    for result, explanation in zip(results, given, strict=True):
        result["explanation"] = explanation
    return results
