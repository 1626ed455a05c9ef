"""Patients → ranked drug classes, the recommended set and its interaction warnings.

The one place that turns a model's probabilities into what a clinician reads, shared by the
Python API (``Recommender.recommend``), the CLI and the REST service. Output of one patient::

    {"patient_id", "model": {"name", "id", "version", "created"},
     "ranked": [{"code", "name", "probability"}, ...],          # every drug class, best first
     "recommended": [code, ...],                                # probability >= threshold, or top_k
     "ddi_warnings": [{"drugs": [a, b], "names": [..]}, ...],   # interacting pairs in that set
     "threshold", "top_k", "warnings": [str, ...],              # unknown codes etc.
     "explanation": {...}}                                      # only with explain (leader.explain)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from leader.artifacts import remove_dead_temps, temp_name
from leader.bundle import Bundle
from leader.bundle import load as load_bundle
from leader.data.dataset import Schema
from leader.data.samples import Sample
from leader.errors import LeaderError
from leader.explain import attach, contributions
from leader.fhir import bundle_to_patient
from leader.patient import DEFAULT_LIMITS, Limits, PatientReader

Parsed = tuple[Sample, list[str]]  # a patient read into a sample, and its input warnings


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


def is_fhir(obj: Any) -> bool:
    return isinstance(obj, dict) and "resourceType" in obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_value(data: bytes | str) -> Any:
    """Standard JSON → a value, or :class:`LeaderError` with a short reason (no ``NaN``, no
    number longer than Python converts, no nesting deeper than the parser's recursion)."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        reason = "nested too deeply"
    except json.JSONDecodeError as e:
        reason = f"{e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError as e:
        reason = f"not UTF-8 text (byte {e.start})"
    except ValueError as e:
        text = str(e)
        reason = "a number with too many digits" if "digits" in text else text[:200]
    raise LeaderError(f"not valid JSON ({reason})")


def read_json_file(path: Path) -> Any:
    """A patient file: JSON (patient or FHIR Bundle); errors name the file."""
    if not path.is_file():
        raise LeaderError(f"{path}: file not found")
    try:
        return json_value(path.read_bytes())
    except LeaderError as e:
        raise LeaderError(f"{path}: {e}") from None
    except OSError as e:
        raise LeaderError(f"{path}: cannot read ({e.strerror})") from None


def _open_output(tmp: Path, out: Path) -> Any:
    try:
        return tmp.open("w")
    except OSError as e:
        raise LeaderError(f"{out}: cannot write ({e.strerror})") from None


@dataclass(eq=False)
class Recommender(Bundle):
    """A loaded bundle that reads patients and answers recommendations.

    Every front door (the Python API, the CLI, the REST service) goes through the same three
    steps: :meth:`read` a patient into a sample (JSON or FHIR, unknown codes as warnings),
    :meth:`predict_proba` on a batch of samples, :meth:`outputs` from the probabilities.
    """

    _readers: dict[Limits, PatientReader] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> Recommender:
        """Load a MODEL_DIR; refuse one that is damaged or from an unreadable format."""
        loaded = load_bundle(directory, verify)
        return cls(loaded.directory, loaded.manifest, loaded.model)

    def reader(self, limits: Limits = DEFAULT_LIMITS) -> PatientReader:
        """The patient reader for these limits (built once per limits)."""
        if limits not in self._readers:
            self._readers[limits] = PatientReader(self.schema, limits)
        return self._readers[limits]

    @cached_property
    def info(self) -> dict[str, str]:
        """Which model answered: its name, a content id (hash of the bundle's file hashes) and
        the leader version that built it, so a recommendation traces to the exact bundle."""
        files = json.dumps(self.manifest.get("files", {}), sort_keys=True).encode()
        return {
            "name": self.name,
            "id": f"{self.name}-{hashlib.sha256(files).hexdigest()[:12]}",
            "version": str(self.manifest.get("versions", {}).get("leader", "")),
            "created": str(self.manifest.get("created", "")),
        }

    # --- the three steps ---------------------------------------------------------------------

    def read(self, obj: Any, patient_id: str = "patient", limits: Limits = DEFAULT_LIMITS
             ) -> Parsed:
        """A patient JSON or a FHIR Bundle (detected by ``resourceType``) → sample, warnings."""
        reader = self.reader(limits)
        extra: list[str] = []
        if is_fhir(obj):
            obj, extra = bundle_to_patient(obj, reader.limits)
        sample, warnings = reader.to_sample(obj, patient_id)
        return sample, extra + warnings

    def read_many(self, patients: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> list[Parsed]:
        """Read every patient; a bad one raises :class:`LeaderError` naming its index."""
        parsed = []
        for i, p in enumerate(patients):
            try:
                parsed.append(self.read(p, f"patient{i}", limits))
            except LeaderError as e:
                where = f"patients[{i}]: " if len(patients) > 1 else ""
                raise LeaderError(f"{where}{e}") from None
        return parsed

    def outputs(
        self,
        parsed: Sequence[Parsed],
        probs: np.ndarray,
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> list[dict]:
        """The recommendation of each parsed patient from its row of ``probs``."""
        check_choice(top_k, threshold)
        cut = self.threshold if threshold is None else threshold
        return [
            {
                "patient_id": sample.patient_id,
                "model": self.info,
                **ranked_output(probs[i], self.schema, cut, top_k, self.max_drugs),
                "threshold": cut if top_k is None else None,
                "top_k": top_k,
                "warnings": warnings,
            }
            for i, (sample, warnings) in enumerate(parsed)
        ]

    # --- conveniences over the three steps ------------------------------------------------------

    def recommend_samples(
        self,
        parsed: Sequence[Parsed],
        top_k: int | None = None,
        threshold: float | None = None,
        explain: bool = False,
    ) -> list[dict]:
        """Score already-read patients in one model call and build each output; with
        ``explain``, the reasons behind each recommended class (:mod:`leader.explain`)."""
        check_choice(top_k, threshold)
        samples = [s for s, _ in parsed]
        if not explain or not samples:
            return self.outputs(parsed, self.predict_proba(samples), top_k, threshold)
        probs, method, found = contributions(self.model, samples)  # scores and explains at once
        return attach(self.outputs(parsed, probs, top_k, threshold), self.schema, method, found)

    def recommend(
        self, patient: Any, top_k: int | None = None, threshold: float | None = None
    ) -> dict:
        """Recommend for one patient (a dict, a validated model, or a FHIR Bundle)."""
        return self.recommend_many([patient], top_k, threshold)[0]

    def recommend_many(
        self,
        patients: Sequence[Any],
        top_k: int | None = None,
        threshold: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> list[dict]:
        """Recommend for several patients in one model call; a bad patient raises
        :class:`LeaderError` naming its index, and nothing is scored then."""
        check_choice(top_k, threshold)
        return self.recommend_samples(self.read_many(patients, limits), top_k, threshold)

    def recommend_file(
        self,
        path: Path,
        top_k: int | None = None,
        threshold: float | None = None,
        explain: bool = False,
    ) -> dict:
        """Recommend for the one patient in ``path`` (patient JSON or FHIR Bundle, detected)."""
        check_choice(top_k, threshold)
        obj = read_json_file(path)
        try:
            parsed = self.read(obj, path.stem)
        except LeaderError as e:
            raise LeaderError(f"{path}: {e}") from None
        return self.recommend_samples([parsed], top_k, threshold, explain)[0]

    def recommend_jsonl(
        self,
        src: Path,
        out: Path,
        top_k: int | None = None,
        threshold: float | None = None,
        force: bool = False,
        chunk: int = 256,
        progress: Callable[[int], None] | None = None,
        explain: bool = False,
    ) -> tuple[int, list[dict]]:
        """One patient per line in ``src`` → one result per line in ``out``, in the same order.

        A line that is not a valid patient becomes ``{"line": n, "error": "..."}`` in ``out``
        and the others are still scored: one bad record must not sink a batch of thousands.
        Blank lines are skipped. ``out`` is written to a temporary file and renamed at the end,
        so it is either complete or absent. Returns (lines scored, error records).
        """
        check_choice(top_k, threshold)
        if not src.is_file():
            raise LeaderError(f"{src}: file not found")
        if out.is_dir():
            raise LeaderError(f"{out}: is a directory; expected a file name for the JSONL output")
        if (out.exists() or out.is_symlink()) and not force:
            raise LeaderError(f"{out}: already exists; use --force to replace it")
        if not out.parent.is_dir():
            raise LeaderError(f"{out}: directory {out.parent} does not exist")
        errors: list[dict] = []
        n_ok = 0
        remove_dead_temps(out.parent, out.name)
        tmp = temp_name(out)  # two runs writing one file do not share a temp
        choice = (top_k, threshold, explain)
        try:
            with src.open("rb") as lines, _open_output(tmp, out) as sink:
                pending: list[tuple[int, bytes]] = []
                for n, raw in enumerate(lines, start=1):
                    if raw.strip():
                        pending.append((n, raw))
                    if len(pending) >= chunk:
                        n_ok += self._score_lines(pending, sink, errors, choice)
                        pending = []
                    if progress:
                        progress(len(raw))
                n_ok += self._score_lines(pending, sink, errors, choice)
            tmp.replace(out)
        except OSError as e:
            raise LeaderError(f"{e.filename or out}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return n_ok, errors

    def _score_lines(
        self,
        lines: list[tuple[int, bytes]],
        sink: Any,
        errors: list[dict],
        choice: tuple[int | None, float | None, bool],
    ) -> int:
        records: list[tuple[int, dict | None]] = []
        parsed = []
        for n, raw in lines:
            try:
                obj = json_value(raw)
            except LeaderError as e:
                records.append((n, {"line": n, "error": f"line {n}: {e}"}))
                continue
            try:
                parsed.append(self.read(obj, f"line{n}"))
                records.append((n, None))
            except LeaderError as e:
                records.append((n, {"line": n, "error": f"line {n}: {e}"}))
        results = iter(self.recommend_samples(parsed, *choice))
        for n, error in records:
            if error is not None:
                errors.append(error)
            sink.write(json.dumps(error or {"line": n, **next(results)}) + "\n")
        return len(parsed)
