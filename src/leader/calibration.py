"""Calibrated probabilities: a probability of 0.7 should come true 70% of the time.

Models trained with a multi-label BCE (and students distilled from an LLM) rank well but are
often over- or under-confident. A calibration is fitted on the validation split after
training and applied on top of ``predict_proba``:

* ``temperature``: one scalar T per model; p' = sigmoid(logit(p) / T), T fitted by minimising the
  validation BCE. It keeps every ranking (and so Jaccard at a tuned threshold, PRAUC) intact.
* ``isotonic``: a monotone step function per drug class (scikit-learn's isotonic regression,
  stored as its knots, applied with linear interpolation), for classes with at least
  ``MIN_ISOTONIC`` positive and negative validation visits; the other classes get the
  temperature. More flexible, needs more data.

The calibration is a JSON file in the bundle (``calibration.json``, checksummed like every
other file); :func:`wrap` puts a loaded model behind a small wrapper that applies it, so every
caller of ``predict_proba`` (evaluate, compare, recommend, serve) sees calibrated values.

ECE (expected calibration error) is computed over every (visit, class) pair: equal-width bins
of predicted probability, the weighted mean gap between mean prediction and observed frequency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leader.artifacts import read_json, write_json
from leader.data.samples import Sample
from leader.errors import LeaderError

CALIBRATION_FILE = "calibration.json"
METHODS = ("none", "temperature", "isotonic")
MIN_ISOTONIC = 30  # positive and negative validation visits a class needs for its own curve
BINS = 15
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def bce(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in (0.05, 20) minimising the BCE of sigmoid(logit(p) / T) (bounded 1-D search)."""
    from scipy.optimize import minimize_scalar

    z, target = _logit(probs).ravel(), np.asarray(y, dtype=np.float64).ravel()
    found = minimize_scalar(
        lambda log_t: bce(_sigmoid(z / np.exp(log_t)), target),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots (x, y) of the isotonic regression of y on p, clipped to [0, 1]."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


@dataclass
class Calibration:
    """A fitted calibration: temperature, per-class isotonic knots, what it was fitted on."""

    method: str
    temperature: float = 1.0
    isotonic: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs)
        if self.method == "none" or probs.size == 0:
            return probs
        out = _sigmoid(_logit(probs) / self.temperature)
        for j, (xs, ys) in self.isotonic.items():
            out[:, j] = np.interp(probs[:, j], xs, ys)
        return out.astype(np.float32)

    def describe(self) -> str:
        """One line for the model card."""
        if self.method == "none":
            return "none: the model's own probabilities"
        where = self.fitted_on
        text = (
            f"{self.method}, fitted on the {where.get('split', 'val')} split "
            f"({where.get('n_visits', '?')} visits): temperature {self.temperature:.3f}"
        )
        if self.method == "isotonic":
            text += f", isotonic curves for {len(self.isotonic)} classes (others: temperature)"
        if "ece_before" in where:
            text += f"; ECE on that split {where['ece_before']:.4f} → {where['ece_after']:.4f}"
        return text

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "temperature": self.temperature,
            "isotonic": {str(j): {"x": xs, "y": ys} for j, (xs, ys) in self.isotonic.items()},
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = CALIBRATION_FILE) -> Calibration:
        try:
            method = str(obj["method"])
            if method not in METHODS:
                raise ValueError(f"method {method!r}")
            temperature = float(obj.get("temperature", 1.0))
            if not temperature > 0:
                raise ValueError("temperature must be positive")
            iso = {
                int(j): ([float(v) for v in k["x"]], [float(v) for v in k["y"]])
                for j, k in obj.get("isotonic", {}).items()
            }
            if any(len(xs) != len(ys) or not xs for xs, ys in iso.values()):
                raise ValueError("isotonic knots: x and y must be non-empty and of equal length")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LeaderError(f"{where}: not a valid calibration ({e})") from None
        return cls(method, temperature, iso, dict(obj.get("fitted_on", {})))


def fit(
    probs: np.ndarray, y: np.ndarray, method: str, min_count: int = MIN_ISOTONIC, **fitted_on: Any
) -> Calibration:
    """Fit ``method`` on validation probabilities and labels ([visits, classes], 0/1)."""
    if method not in METHODS:
        raise LeaderError(f"calibration: expected one of {', '.join(METHODS)}, got {method!r}")
    y = np.asarray(y, dtype=np.float64)
    if probs.shape != y.shape or probs.size == 0:
        raise LeaderError(f"calibration: needs validation visits (got {probs.shape[0]})")
    cal = Calibration(method, fitted_on={"n_visits": int(probs.shape[0]), **fitted_on})
    if method == "none":
        return cal
    cal.temperature = fit_temperature(probs, y)
    if method == "isotonic":
        positives = y.sum(0)
        for j in range(y.shape[1]):
            if min(positives[j], len(y) - positives[j]) >= min_count:
                cal.isotonic[j] = fit_isotonic(probs[:, j], y[:, j])
    cal.fitted_on["ece_before"] = ece(probs, y)
    cal.fitted_on["ece_after"] = ece(cal.apply(probs), y)
    return cal


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of predicted probability: count, mean prediction, observed rate."""
    p, t = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append({
            "lo": b / bins,
            "hi": (b + 1) / bins,
            "n": n,
            "confidence": float(p[mask].mean()) if n else None,
            "frequency": float(t[mask].mean()) if n else None,
        })
    return out


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over every (visit, class) pair."""
    table = reliability(probs, y, bins)
    total = sum(b["n"] for b in table)
    if not total:
        return 0.0
    return float(
        sum(b["n"] * abs(b["confidence"] - b["frequency"]) for b in table if b["n"]) / total
    )


class CalibratedModel:
    """A model whose ``predict_proba`` is calibrated; everything else is the model's own."""

    def __init__(self, model: Any, calibration: Calibration):
        self.base = model
        self.calibration = calibration

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return self.calibration.apply(self.base.predict_proba(samples))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def uncalibrated(model: Any) -> Any:
    return model.base if isinstance(model, CalibratedModel) else model


def read(directory: Path) -> Calibration | None:
    path = Path(directory) / CALIBRATION_FILE
    return Calibration.from_json(read_json(path), str(path)) if path.is_file() else None


def write(directory: Path, calibration: Calibration) -> None:
    write_json(Path(directory) / CALIBRATION_FILE, calibration.to_json())


def wrap(model: Any, directory: Path) -> Any:
    """``model`` behind its bundle's calibration, if the bundle has one."""
    cal = read(directory)
    return model if cal is None or cal.method == "none" else CalibratedModel(model, cal)
