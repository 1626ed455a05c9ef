"""Patients → ranked drug classes, the recommended set and its interaction warnings.

The one place that turns a model's probabilities into what a clinician reads, shared by the
Python API (``Recommender.recommend``), the CLI and the REST service. Output of one patient::

    {"patient_id", "model": {"name", "id", "version", "created"},
     "ranked": [{"code", "name", "probability"}, ...],          # every drug class, best first
     "recommended": [code, ...],                                # probability >= threshold, or top_k
     "ddi_warnings": [{"drugs": [a, b], "names": [..]}, ...],   # interacting pairs in that set
     "threshold", "top_k", "warnings": [str, ...]}              # unknown codes etc.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leader.data.dataset import Schema
from leader.data.samples import Sample
from leader.errors import LeaderError
from leader.patient import DEFAULT_LIMITS, Limits, PatientReader

if TYPE_CHECKING:
    from leader.bundle import Recommender

_readers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reader_for(rec: Recommender, limits: Limits = DEFAULT_LIMITS) -> PatientReader:
    """The (cached) patient reader of a loaded model."""
    per_model = _readers.setdefault(rec, {})
    if limits not in per_model:
        per_model[limits] = PatientReader(rec.schema, limits)
    return per_model[limits]


def model_info(rec: Recommender) -> dict[str, str]:
    """Which model answered: its name, a content id (hash of the bundle's file hashes) and the
    leader version that built it, so a recommendation can be traced to the exact bundle."""
    files = json.dumps(rec.manifest.get("files", {}), sort_keys=True).encode()
    return {
        "name": rec.name,
        "id": f"{rec.name}-{hashlib.sha256(files).hexdigest()[:12]}",
        "version": str(rec.manifest.get("versions", {}).get("leader", "")),
        "created": str(rec.manifest.get("created", "")),
    }


def ranked_output(
    probs: np.ndarray,
    schema: Schema,
    threshold: float,
    top_k: int | None,
    max_drugs: int | None = None,
) -> dict[str, Any]:
    """Rank every drug class; pick the recommended set; list interacting pairs inside it."""
    drugs = schema.drugs
    order = np.argsort(-probs, kind="stable")
    rounded = np.round(probs[order].astype(np.float64), 6).tolist()
    ranked = [
        {"code": drugs.codes[j], "name": drugs.titles[j], "probability": p}
        for j, p in zip(order.tolist(), rounded, strict=True)
    ]
    chosen = order[:top_k] if top_k is not None else order[probs[order] >= threshold][:max_drugs]
    chosen = chosen.tolist()
    ddi = schema.ddi_matrix
    warnings = [
        {"drugs": [drugs.codes[a], drugs.codes[b]], "names": [drugs.titles[a], drugs.titles[b]]}
        for x, a in enumerate(chosen)
        for b in chosen[x + 1 :]
        if ddi[a, b]
    ]
    return {
        "ranked": ranked,
        "recommended": [drugs.codes[j] for j in chosen],
        "ddi_warnings": warnings,
    }


def check_choice(top_k: int | None, threshold: float | None) -> None:
    if top_k is not None and top_k < 1:
        raise LeaderError(f"top_k: expected a positive number, got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise LeaderError(f"threshold: expected a number between 0 and 1, got {threshold}")


def recommend_samples(
    rec: Recommender,
    parsed: Sequence[tuple[Sample, list[str]]],
    top_k: int | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """Score already-mapped samples in one model call and build each output."""
    check_choice(top_k, threshold)
    probs = rec.predict_proba([s for s, _ in parsed])
    return outputs(rec, parsed, probs, top_k, threshold)


def outputs(
    rec: Recommender,
    parsed: Sequence[tuple[Sample, list[str]]],
    probs: np.ndarray,
    top_k: int | None = None,
    threshold: float | None = None,
) -> list[dict]:
    """The recommendation of each parsed patient from its row of ``probs``."""
    cut = rec.threshold if threshold is None else threshold
    model = model_info(rec)
    return [
        {
            "patient_id": sample.patient_id,
            "model": model,
            **ranked_output(probs[i], rec.schema, cut, top_k, rec.max_drugs),
            "threshold": cut if top_k is None else None,
            "top_k": top_k,
            "warnings": warnings,
        }
        for i, (sample, warnings) in enumerate(parsed)
    ]


def recommend_many(
    rec: Recommender,
    patients: Sequence[Any],
    top_k: int | None = None,
    threshold: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[dict]:
    """Recommend for plain-JSON patients (dicts or validated models) or FHIR Bundles.

    A bad patient raises :class:`LeaderError` naming its index; nothing is scored then.
    """
    reader = reader_for(rec, limits)
    parsed = []
    for i, p in enumerate(patients):
        try:
            parsed.append(read_patient(reader, p, f"patient{i}"))
        except LeaderError as e:
            raise LeaderError(f"patients[{i}]: {e}") from None
    return recommend_samples(rec, parsed, top_k=top_k, threshold=threshold)


def is_fhir(obj: Any) -> bool:
    return isinstance(obj, dict) and "resourceType" in obj


def read_patient(
    reader: PatientReader, obj: Any, patient_id: str = "patient"
) -> tuple[Sample, list[str]]:
    """A patient JSON or a FHIR Bundle (detected by ``resourceType``) → sample and warnings."""
    extra: list[str] = []
    if is_fhir(obj):
        from leader.fhir import bundle_to_patient

        obj, extra = bundle_to_patient(obj, reader.limits)
    sample, warnings = reader.to_sample(obj, patient_id)
    return sample, extra + warnings


def read_json_file(path: Path) -> Any:
    """A patient file: JSON (patient or FHIR Bundle); errors name the file."""
    if not path.is_file():
        raise LeaderError(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise LeaderError(f"{path}: not valid JSON ({str(e)[:200]})") from None


def recommend_file(
    rec: Recommender, path: Path, top_k: int | None = None, threshold: float | None = None
) -> dict:
    """Recommend for the one patient in ``path`` (patient JSON or FHIR Bundle, detected)."""
    check_choice(top_k, threshold)
    obj = read_json_file(path)
    try:
        parsed = read_patient(reader_for(rec), obj, path.stem)
    except LeaderError as e:
        raise LeaderError(f"{path}: {e}") from None
    return recommend_samples(rec, [parsed], top_k=top_k, threshold=threshold)[0]


def recommend_jsonl(
    rec: Recommender,
    src: Path,
    out: Path,
    top_k: int | None = None,
    threshold: float | None = None,
    force: bool = False,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[dict]]:
    """One patient per line in ``src`` → one result per line in ``out``, in the same order.

    A line that is not a valid patient becomes ``{"line": n, "error": "..."}`` in ``out`` and
    the others are still scored: one bad record must not sink a batch of thousands. Blank lines
    are skipped. ``out`` is written to a temporary file and renamed at the end, so it is either
    complete or absent. Returns (lines scored, error records).
    """
    check_choice(top_k, threshold)
    if not src.is_file():
        raise LeaderError(f"{src}: file not found")
    if out.exists() and not force:
        raise LeaderError(f"{out}: already exists; use --force to replace it")
    reader = reader_for(rec)
    errors: list[dict] = []
    n_ok = 0
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with src.open("rb") as lines, tmp.open("w") as sink:
            pending: list[tuple[int, Any]] = []
            for n, raw in enumerate(lines, start=1):
                if raw.strip():
                    pending.append((n, raw))
                if len(pending) >= chunk:
                    n_ok += _score_lines(rec, reader, pending, sink, errors, top_k, threshold)
                    pending = []
                if progress:
                    progress(len(raw))
            n_ok += _score_lines(rec, reader, pending, sink, errors, top_k, threshold)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n_ok, errors


def _score_lines(
    rec: Recommender,
    reader: PatientReader,
    lines: list[tuple[int, bytes]],
    sink: Any,
    errors: list[dict],
    top_k: int | None,
    threshold: float | None,
) -> int:
    records: list[tuple[int, dict | None]] = []
    parsed = []
    for n, raw in lines:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:
            records.append((n, {"line": n, "error": f"line {n}: not valid JSON ({e})"}))
            continue
        try:
            parsed.append(read_patient(reader, obj, f"line{n}"))
            records.append((n, None))
        except LeaderError as e:
            records.append((n, {"line": n, "error": f"line {n}: {e}"}))
    results = iter(recommend_samples(rec, parsed, top_k=top_k, threshold=threshold))
    for n, error in records:
        if error is not None:
            errors.append(error)
        sink.write(json.dumps(error or {"line": n, **next(results)}) + "\n")
    return len(parsed)
