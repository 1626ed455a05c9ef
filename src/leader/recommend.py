"""Plain-JSON patients → samples → ranked drug classes with DDI warnings.

A patient is ``{"profile": {field: value}, "visits": [{"diagnoses": [...], "procedures": [...],
"drugs": [...]}, ...]}``, oldest visit first; the last visit is the one to recommend for and its
drugs are ignored. ICD codes may carry their version (``icd10:I10``); a bare code takes the
visit's ``icd_version`` or, failing that, the version most of the model's vocabulary uses.
Codes the model does not know are reported in ``warnings``, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from leader.data.dataset import Schema, icd_key
from leader.data.samples import Sample, Visit
from leader.errors import LeaderError

if TYPE_CHECKING:
    from leader.bundle import Recommender


def default_icd_version(schema: Schema) -> int:
    versions = Counter(
        c.split(":", 1)[0] for k in ("diagnoses", "procedures") for c in schema.vocab[k].codes
    )
    top = versions.most_common(1)
    return int(top[0][0].removeprefix("icd")) if top else 9


def _icd(code: Any, version: int) -> str:
    text = str(code).strip()
    if text.lower().startswith("icd") and ":" in text:
        prefix, rest = text.split(":", 1)
        return icd_key(rest, prefix.lower().removeprefix("icd"))
    return icd_key(text, version)


def patient_to_sample(
    patient: dict, schema: Schema, patient_id: str = "patient"
) -> tuple[Sample, list[str]]:
    """Turn a JSON-like patient into a :class:`Sample`; return it with warnings."""
    if not isinstance(patient, dict):
        raise LeaderError("patient: expected an object with 'profile' and 'visits'")
    visits = patient.get("visits")
    if not isinstance(visits, list) or not visits:
        raise LeaderError("patient.visits: expected a non-empty list of visits, oldest first")
    profile = patient.get("profile") or {}
    if not isinstance(profile, dict):
        raise LeaderError("patient.profile: expected an object of field: value")
    default_version = default_icd_version(schema)
    warnings: list[str] = []
    out: list[Visit] = []
    for i, visit in enumerate(visits):
        if not isinstance(visit, dict):
            raise LeaderError(f"patient.visits[{i}]: expected an object")
        version = int(visit.get("icd_version", default_version))
        codes: dict[str, tuple[str, ...]] = {}
        for kind in ("diagnoses", "procedures", "drugs"):
            raw = visit.get(kind) or []
            if not isinstance(raw, list):
                raise LeaderError(f"patient.visits[{i}].{kind}: expected a list of codes")
            keys = [_icd(c, version) if kind != "drugs" else str(c).strip().upper() for c in raw]
            if kind == "drugs" and i == len(visits) - 1:
                keys = []  # the visit to recommend for: its drugs are what we predict
            unknown = [k for k in keys if k not in schema.vocab[kind].index]
            if unknown:
                warnings.append(f"visits[{i}].{kind}: unknown to the model, ignored: {unknown}")
            codes[kind] = tuple(k for k in keys if k in schema.vocab[kind].index)
        out.append(Visit(codes["diagnoses"], codes["procedures"], codes["drugs"]))
    unknown_fields = sorted(set(profile) - set(schema.profile_fields))
    if unknown_fields:
        warnings.append(f"profile: fields unknown to the model, ignored: {unknown_fields}")
    for field in schema.profile_fields:
        value = profile.get(field)
        if field != "age" and value is not None and str(value) not in schema.profile_vocab[field]:
            warnings.append(f"profile.{field}: value {value!r} unknown to the model")
    clean_profile = {f: profile.get(f) for f in schema.profile_fields}
    return Sample(f"{patient_id}/{len(out) - 1}", patient_id, tuple(out), clean_profile), warnings


def ranked_output(
    probs: np.ndarray, schema: Schema, threshold: float, top_k: int | None
) -> dict[str, Any]:
    drugs = schema.drugs
    order = np.argsort(-probs, kind="mergesort")
    ranked = [
        {"code": drugs.codes[j], "name": drugs.titles[j], "probability": round(float(probs[j]), 6)}
        for j in order
    ]
    chosen = order[:top_k] if top_k is not None else order[probs[order] >= threshold]
    chosen_codes = [drugs.codes[j] for j in chosen]
    ddi = schema.ddi_matrix
    warnings = [
        {
            "drugs": [drugs.codes[a], drugs.codes[b]],
            "names": [drugs.titles[a], drugs.titles[b]],
        }
        for x, a in enumerate(chosen)
        for b in chosen[x + 1 :]
        if ddi[a, b]
    ]
    return {"ranked": ranked, "recommended": chosen_codes, "ddi_warnings": warnings}


def recommend_many(
    rec: Recommender, patients: Sequence[Any], top_k: int | None = None
) -> list[dict]:
    parsed = [patient_to_sample(p, rec.schema, f"patient{i}") for i, p in enumerate(patients)]
    probs = rec.predict_proba([s for s, _ in parsed])
    model = {"name": rec.name, "version": rec.manifest.get("versions", {}).get("leader", "")}
    return [
        {
            "model": model,
            **ranked_output(probs[i], rec.schema, rec.threshold, top_k),
            "threshold": rec.threshold if top_k is None else None,
            "top_k": top_k,
            "warnings": w,
        }
        for i, (_, w) in enumerate(parsed)
    ]
