"""MODEL_DIR bundles: save any model with everything it needs to serve, load it back checked.

A bundle holds the model's own files (``weights.safetensors``, ``model.json``, or the teacher's
adapter), the schema (``vocab.json`` with titles, ``ddi.json``), ``metrics.json``, a model card
``README.md`` and ``manifest.json`` with the SHA-256 of every file, so a damaged or truncated
bundle is refused on load instead of giving silently wrong recommendations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leader.artifacts import (
    MANIFEST,
    atomic_dir,
    read_json,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
)
from leader.data.dataset import Schema
from leader.data.samples import Sample
from leader.errors import LeaderError
from leader.models.base import MedModel, model_class

MODEL_KIND = "leader-model"
MODEL_FORMAT_VERSION = 1
METRICS_FILE = "metrics.json"


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "features" not in p.relative_to(directory).parts
    }


def save_bundle(
    model: MedModel,
    out: str | Path,
    *,
    threshold: float = 0.5,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
    rule: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a self-contained MODEL_DIR at ``out`` (atomically).

    ``rule``: the decision rule of :func:`leader.evaluation.decide_threshold` (threshold, its
    rule in words, optional set-size cap); it wins over ``threshold``."""
    rule = rule or {"threshold": threshold, "threshold_rule": f"fixed {threshold:g}"}
    threshold = float(rule["threshold"])
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        model.save(tmp)
        model.schema.save(tmp)
        write_json(tmp / METRICS_FILE, metrics or {})
        (tmp / "README.md").write_text(model_card(model, threshold, metrics or {}, rule))
        write_manifest(
            tmp,
            MODEL_KIND,
            MODEL_FORMAT_VERSION,
            model=model.name,
            config=model.config,
            threshold=threshold,
            threshold_rule=rule.get("threshold_rule"),
            max_drugs=rule.get("max_drugs"),
            **({"threshold_tuning": rule["tuning"]} if rule.get("tuning") else {}),
            parameters=model.num_parameters(),
            data={"source": model.schema.source, "hash": model.schema.data_hash},
            files=_file_hashes(tmp),
            **(extra or {}),
        )
    return out


def model_card(
    model: MedModel, threshold: float, metrics: dict[str, Any], rule: dict | None = None
) -> str:
    lines = [
        f"# leader model: {model.name}",
        "",
        "## Intended use",
        "Decision support for clinicians reviewing a medication plan: it ranks ATC level-3 drug",
        "classes for a hospital visit and flags interacting pairs. It is not a prescriber: every",
        "recommendation needs review by a qualified clinician, and it knows nothing of doses,",
        "allergies, contraindications or drugs outside its vocabulary.",
        "",
        "## Data",
        f"- source: {model.schema.source or 'unknown'}; data hash: {model.schema.data_hash or '-'}",
        f"- drug classes: {len(model.schema.drugs)}; diagnoses: "
        f"{len(model.schema.vocab['diagnoses'])}; procedures: "
        f"{len(model.schema.vocab['procedures'])}",
        f"- DDI pairs: {len(model.schema.ddi_pairs)} "
        f"({model.schema.ddi_source or 'unknown source'})",
        "",
        "## Decision rule",
        f"A drug class is recommended when its probability is at least {threshold:g} "
        f"(rule: {(rule or {}).get('threshold_rule') or 'fixed'}).",
        "",
        "## Metrics",
    ]
    if not metrics:
        lines.append("Not evaluated yet (`leader evaluate`).")
    for split, values in metrics.items():
        if isinstance(values, dict):
            shown = ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in values.items()
                if not isinstance(v, dict | list)
            )
            lines.append(f"- {split}: {shown}")
    lines += [
        "",
        "## Limits",
        "Trained on one hospital's records; it reproduces that hospital's prescribing habits,",
        "including their biases, and has not been validated prospectively.",
        "",
    ]
    return "\n".join(lines)


class Recommender:
    """A loaded bundle: scores samples and recommends for plain-JSON patients."""

    def __init__(self, directory: Path, manifest: dict, model: MedModel):
        self.directory = directory
        self.manifest = manifest
        self.model = model
        self.threshold = float(manifest.get("threshold", 0.5))
        cap = manifest.get("max_drugs")
        self.max_drugs = int(cap) if cap is not None else None  # cap on the recommended set

    @property
    def schema(self) -> Schema:
        return self.model.schema

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def metrics(self) -> dict:
        return read_json(self.directory / METRICS_FILE)

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return np.asarray(self.model.predict_proba(samples), dtype=np.float32)

    def recommend(self, patient: Any, top_k: int | None = None) -> dict:
        return self.recommend_many([patient], top_k=top_k)[0]

    def recommend_many(self, patients: Sequence[Any], top_k: int | None = None) -> list[dict]:
        from leader.recommend import recommend_many

        return recommend_many(self, patients, top_k=top_k)


def load(directory: str | Path, verify: bool = True) -> Recommender:
    """Load a MODEL_DIR; refuse one that is damaged or from an unreadable format."""
    directory = Path(directory)
    manifest = read_manifest(directory, MODEL_KIND, MODEL_FORMAT_VERSION)
    if verify:
        expected = manifest.get("files", {})
        for rel, digest in expected.items():
            path = directory / rel
            if not path.is_file():
                raise LeaderError(f"{path}: missing from the bundle; it is damaged")
            if sha256_file(path) != digest:
                raise LeaderError(f"{path}: checksum does not match the manifest; bundle damaged")
    data = manifest.get("data", {})
    schema = Schema.load(directory, source=data.get("source", ""), data_hash=data.get("hash", ""))
    cls = model_class(str(manifest.get("model")))
    try:
        model = cls.load(directory, schema)
    except LeaderError:
        raise
    except Exception as e:  # a file that passed the checksum but does not fit the model
        raise LeaderError(f"{directory}: cannot load the {cls.name} model ({e})") from None
    return Recommender(directory, manifest, model)
