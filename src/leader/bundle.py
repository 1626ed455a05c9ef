"""MODEL_DIR bundles: save any model with everything it needs to serve, load it back checked.

A bundle holds the model's own files (``weights.safetensors``, ``model.json``, or the teacher's
adapter), the schema (``vocab.json`` with titles, ``ddi.json``), ``metrics.json``, a model card
``README.md`` and ``manifest.json`` with the SHA-256 of every file, so a damaged or truncated
bundle is refused on load instead of giving silently wrong recommendations.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from leader import calibration as calib
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
SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    calibration: calib.Calibration | None = None,
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
        if calibration is not None:
            calib.write(tmp, calibration)
        card = model_card(model, threshold, metrics or {}, calibration, rule)
        (tmp / "README.md").write_text(card)
        write_manifest(
            tmp,
            MODEL_KIND,
            MODEL_FORMAT_VERSION,
            model=model.name,
            config=model.config.to_dict(),
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
    model: MedModel,
    threshold: float,
    metrics: dict[str, Any],
    calibration: calib.Calibration | None = None,
    rule: dict | None = None,
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
        "## Calibration",
        calibration.describe() if calibration else "Not calibrated: the model's own probabilities.",
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


@dataclass(eq=False)
class Bundle:
    """A loaded MODEL_DIR: the model, its manifest and where it came from."""

    directory: Path
    manifest: dict
    model: MedModel

    @property
    def schema(self) -> Schema:
        return self.model.schema

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))

    @property
    def max_drugs(self) -> int | None:
        """A cap on the recommended set's size, when the bundle's rule has one."""
        cap = self.manifest.get("max_drugs")
        return int(cap) if cap is not None else None

    @property
    def metrics(self) -> dict:
        return read_json(self.directory / METRICS_FILE)

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return np.asarray(self.model.predict_proba(samples), dtype=np.float32)


def validate_manifest(directory: Path, manifest: dict) -> None:
    """Check the fields :func:`load` relies on; a bad one is a one-line :class:`LeaderError`.

    A threshold outside [0, 1] or NaN would make every answer empty (or fail to serialise),
    and ``files`` is what the checksums are verified against, so both are checked up front.
    """
    path = directory / MANIFEST
    threshold = manifest.get("threshold", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise LeaderError(f"{path}: threshold {threshold!r}: expected a number between 0 and 1")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise LeaderError(f"{path}: files: expected an object of file name → SHA-256, non-empty")
    for rel, digest in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise LeaderError(f"{path}: files: {rel[:80]!r} is not a path inside the bundle")
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise LeaderError(f"{path}: files[{rel[:80]!r}]: expected a SHA-256 hex digest")
    if not isinstance(manifest.get("model"), str):
        raise LeaderError(f"{path}: model: expected the model's name")


def check_finite_weights(directory: Path, manifest: dict) -> None:
    """Refuse weights holding NaN or infinity: they pass the checksums if the manifest was
    rewritten, and every answer would then carry non-finite probabilities."""
    for rel in manifest["files"]:
        if not rel.endswith(".safetensors"):
            continue
        try:
            with safe_open(str(directory / rel), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    values = f.get_tensor(name)
                    if values.is_floating_point() and not torch.isfinite(values).all():
                        raise LeaderError(
                            f"{directory / rel}: tensor {name!r} holds NaN or infinite values"
                        )
        except LeaderError:
            raise
        except Exception as e:  # a header or dtype safetensors cannot read
            raise LeaderError(f"{directory / rel}: not readable weights ({e})") from None


def load(directory: str | Path, verify: bool = True) -> Bundle:
    """Load a MODEL_DIR; refuse one that is damaged or from an unreadable format."""
    directory = Path(directory)
    manifest = read_manifest(directory, MODEL_KIND, MODEL_FORMAT_VERSION)
    validate_manifest(directory, manifest)
    if verify:
        expected = manifest.get("files", {})
        for rel, digest in expected.items():
            path = directory / rel
            if not path.is_file():
                raise LeaderError(f"{path}: missing from the bundle; it is damaged")
            if sha256_file(path) != digest:
                raise LeaderError(f"{path}: checksum does not match the manifest; bundle damaged")
        check_finite_weights(directory, manifest)
    data = manifest.get("data", {})
    schema = Schema.load(directory, source=data.get("source", ""), data_hash=data.get("hash", ""))
    cls = model_class(str(manifest.get("model")))
    try:
        model = cls.load(directory, schema)
    except LeaderError:
        raise
    except Exception as e:  # a file that passed the checksum but does not fit the model
        raise LeaderError(f"{directory}: cannot load the {cls.name} model ({e})") from None
    return Bundle(directory, manifest, calib.wrap(model, directory))


def store_calibration(
    directory: str | Path,
    calibration: calib.Calibration,
    out: str | Path | None = None,
    force: bool = False,
    rule: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Copy the bundle at ``directory`` to ``out`` (default: replace it) with ``calibration``
    (method ``none`` removes one); README and manifest are rewritten, the rest is copied.
    ``rule`` and ``metrics``: the decision rule and scores on the calibrated probabilities
    (default: keep the bundle's)."""
    src = Path(directory)
    rec = load(src)
    out = Path(out) if out is not None else src
    model = calib.uncalibrated(rec.model)
    metrics = rec.metrics if metrics is None else metrics
    rule = rule or {"threshold": rec.threshold, "threshold_rule": rec.manifest.get(
        "threshold_rule"), "max_drugs": rec.max_drugs, "tuning": rec.manifest.get(
        "threshold_tuning")}
    skip = shutil.ignore_patterns(MANIFEST, calib.CALIBRATION_FILE, "README.md", METRICS_FILE)
    with atomic_dir(out, force=force or out.resolve() == src.resolve()) as tmp:
        shutil.copytree(src, tmp, ignore=skip, dirs_exist_ok=True)
        kept = calibration if calibration.method != "none" else None
        if kept is not None:
            calib.write(tmp, kept)
        write_json(tmp / METRICS_FILE, metrics)
        threshold = float(rule["threshold"])
        (tmp / "README.md").write_text(model_card(model, threshold, metrics, kept, rule))
        fields = {k: v for k, v in rec.manifest.items() if k not in (
            "kind", "format_version", "created", "versions", "files", "threshold_tuning")}
        fields.update(threshold=threshold, threshold_rule=rule.get("threshold_rule"),
                      max_drugs=rule.get("max_drugs"), calibration=calibration.method)
        if rule.get("tuning"):
            fields["threshold_tuning"] = rule["tuning"]
        write_manifest(tmp, MODEL_KIND, MODEL_FORMAT_VERSION, **fields, files=_file_hashes(tmp))
    return out
