"""`leader evaluate`: score one model bundle on one split under one stated protocol.

Every model is scored only through ``Bundle.predict_proba``, with one threshold rule for all
models and seeded resamples that depend only on (number of visits, rounds, frac, seed), so two
models evaluated with the same options are compared on identical draws. The result is the
``EVAL.json`` layout other tools read::

    {"protocol": {split, rounds, frac, with_replacement, seed, threshold, threshold_rule,
                  conventions, ...},
     "metrics": {"jaccard": {"mean", "std", "ci95"}, "prauc", "f1", "ddi_rate", "avg_meds"},
     "groups": {"first_visit": {"n_visits", "metrics"}, "returning": {...},
                "by_visits": {"1": {...}, "2": {...}, "3+": {...}}},
     "model": {name, dir, parameters, manifest_sha256, inference_ms_per_visit, ...},
     "data": {source, dir, hash, split, n_visits, n_patients, same_cohort_as_model}}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leader.artifacts import MANIFEST, sha256_file
from leader.bundle import Bundle, load, store_calibration
from leader.calibration import CalibratedModel, Calibration, fit, uncalibrated
from leader.configs import ConfigError
from leader.data.dataset import SPLITS, Dataset
from leader.data.samples import Sample, multi_hot
from leader.errors import LeaderError
from leader.metrics import (
    CONVENTIONS,
    THRESHOLD_SEARCH,
    interval,
    per_round,
    per_visit,
    resample_indices,
    resampled,
    search_threshold,
    summarize,
)

DEFAULT_THRESHOLD = 0.5
TUNED_RULE = THRESHOLD_SEARCH


def protocol_line(protocol: dict) -> str:
    """One line that travels with every printed table."""
    return (
        f"split {protocol['split']}, {protocol['rounds']} resamples of "
        f"{protocol['frac']:.0%} with replacement (seed {protocol['seed']}), "
        f"threshold {protocol['threshold']:g} ({protocol['threshold_rule']})"
    )


def as_bundle(model: str | Path | Bundle) -> Bundle:
    return model if isinstance(model, Bundle) else load(model)


def as_dataset(data: str | Path | Dataset) -> Dataset:
    return data if isinstance(data, Dataset) else Dataset.load(data)


def split_samples(data: Dataset, split: str) -> list[Sample]:
    if split not in SPLITS:
        raise ConfigError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    samples = data.samples(split)
    if not samples:
        raise LeaderError(f"{data.root}: split {split!r} has no visits; nothing to evaluate")
    return samples


def drug_columns(rec: Bundle, data: Dataset) -> np.ndarray:
    """Column of each data drug in the model's output; refuse a model that lacks some drug."""
    index = rec.schema.drugs.index
    missing = [c for c in data.drugs.codes if c not in index]
    if missing:
        raise LeaderError(
            f"{rec.directory}: the model does not score {len(missing)} drug classes of "
            f"{data.root} (e.g. {missing[0]}); evaluate it on the data it was trained on"
        )
    return np.array([index[c] for c in data.drugs.codes])


def score(
    rec: Bundle, data: Dataset, samples: Sequence[Sample]
) -> tuple[np.ndarray, float]:
    """Probabilities in the data's drug order, and the seconds the model took."""
    cols = drug_columns(rec, data)
    start = time.perf_counter()
    probs = rec.predict_proba(samples)
    seconds = time.perf_counter() - start
    if probs.shape != (len(samples), len(rec.schema.drugs)):
        raise LeaderError(
            f"{rec.directory}: model returned scores of shape {probs.shape}, expected "
            f"({len(samples)}, {len(rec.schema.drugs)})"
        )
    return probs[:, cols], seconds


def truth(samples: Sequence[Sample], data: Dataset) -> np.ndarray:
    return multi_hot([s.target for s in samples], data.drugs).numpy().astype(bool)


def group_masks(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """First visit (no history) vs returning, and by number of visits including the current."""
    n = np.array([len(s.visits) for s in samples])
    return {
        "first_visit": n == 1,
        "returning": n > 1,
        "by_visits/1": n == 1,
        "by_visits/2": n == 2,
        "by_visits/3+": n >= 3,
    }


def rule_text(threshold: float, tuned: bool, max_drugs: int | None = None) -> str:
    """The decision rule in words, as every result states it."""
    rule = TUNED_RULE if tuned else f"fixed {threshold:g}"
    return rule + (f", at most {max_drugs} drugs per visit" if max_drugs else "")


def check_threshold(threshold: float | None, max_drugs: int | None = None) -> None:
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError("threshold", f"expected a number between 0 and 1, got {threshold}")
    if max_drugs is not None and max_drugs < 1:
        raise ConfigError("max_drugs", f"expected at least 1, got {max_drugs}")


def decide_threshold(
    model: Any,
    data: Dataset,
    threshold: float | None = None,
    max_drugs: int | None = None,
    val_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """The decision rule a pipeline stores in a bundle: ``threshold`` when given (fixed), else
    the validation split's best mean-F1 grid value; never the test split. Any model's pipeline
    calls this after fitting, so every model gets the same rule. ``val_probs``: the model's
    scores of the val split when already computed (a slow teacher scores it once)."""
    check_threshold(threshold, max_drugs)
    out: dict[str, Any] = {"max_drugs": max_drugs}
    val = data.samples("val")
    if threshold is not None or not val:
        fixed = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        rule = rule_text(fixed, False, max_drugs)
        if threshold is None:
            rule += " (no validation visits to tune on)"
        return {**out, "threshold": fixed, "threshold_rule": rule}
    probs = np.asarray(model.predict_proba(val) if val_probs is None else val_probs)
    best, f1 = search_threshold(truth(val, data), probs, max_drugs=max_drugs)
    return {
        **out,
        "threshold": best,
        "threshold_rule": rule_text(best, True, max_drugs),
        "tuning": {"val_visits": len(val), "val_f1": f1},
    }


def choose_threshold(
    rec: Bundle, data: Dataset, threshold: float | None, tune: bool
) -> tuple[float, str, dict[str, Any]]:
    """The threshold, the rule in words, and what tuning saw (empty when not tuned).

    Neither given: the bundle's own rule (tuned on validation when it was trained)."""
    if tune:
        if threshold is not None:
            raise ConfigError("threshold", "give a threshold or tune it, not both")
        val = split_samples(data, "val")
        probs, _ = score(rec, data, val)
        best, f1 = search_threshold(truth(val, data), probs, max_drugs=rec.max_drugs)
        rule = rule_text(best, True, rec.max_drugs) + " (at evaluation)"
        return best, rule, {"val_visits": len(val), "val_f1": f1}
    if threshold is None:
        rule = rec.manifest.get("threshold_rule") or rule_text(rec.threshold, False)
        return rec.threshold, f"the bundle's: {rule}", {}
    check_threshold(threshold)
    return float(threshold), rule_text(threshold, False, rec.max_drugs) + " for every model", {}


def metrics_block(
    y: np.ndarray,
    probs: np.ndarray,
    ddi: np.ndarray,
    samples: Sequence[Sample],
    draws: list[np.ndarray],
    threshold: float,
    max_drugs: int | None = None,
) -> tuple[dict, dict]:
    """Resampled metrics over all visits, and per group on the same draws.

    Each block also keeps its per-round values (``rounds``), so that two models evaluated with
    the same options can be compared round by round (:func:`paired_differences`)."""
    values = per_visit(y, probs, ddi, threshold, max_drugs)
    groups: dict[str, Any] = {"by_visits": {}}
    for key, mask in group_masks(samples).items():
        sub = [d[mask[d]] for d in draws]
        sub = [d for d in sub if len(d)]
        block = {"n_visits": int(mask.sum()), "metrics": resampled(values, sub) if sub else None}
        if key.startswith("by_visits/"):
            groups["by_visits"][key.split("/", 1)[1]] = block
        else:
            block["rounds"] = per_round(values, sub) if sub else None
            groups[key] = block
    groups["all"] = {"n_visits": len(samples), "rounds": per_round(values, draws)}
    return resampled(values, draws), groups


def evaluate(
    model: str | Path | Bundle,
    data: str | Path | Dataset,
    split: str = "test",
    rounds: int = 10,
    frac: float = 0.8,
    seed: int = 0,
    threshold: float | None = None,
    tune_threshold: bool = False,
) -> dict:
    """Score ``model`` on ``split`` of ``data``; return the EVAL.json dict (see module doc)."""
    if rounds < 1:
        raise ConfigError("rounds", f"expected at least 1, got {rounds}")
    if not 0.0 < frac <= 1.0:
        raise ConfigError("frac", f"expected a share in (0, 1], got {frac}")
    rec, data = as_bundle(model), as_dataset(data)
    samples = split_samples(data, split)
    thr, rule, tuning = choose_threshold(rec, data, threshold, tune_threshold)
    probs, seconds = score(rec, data, samples)
    draws = resample_indices(len(samples), rounds, frac, seed)
    metrics, groups = metrics_block(
        truth(samples, data), probs, data.ddi_matrix, samples, draws, thr, rec.max_drugs
    )
    manifest = rec.manifest
    trained_on = manifest.get("data", {}).get("hash", "")
    return {
        "protocol": {
            "split": split,
            "rounds": rounds,
            "frac": frac,
            "with_replacement": True,
            "seed": seed,
            "sample_size": len(draws[0]),
            "threshold": thr,
            "threshold_rule": rule,
            "max_drugs": rec.max_drugs,
            **({"tuning": tuning} if tuning else {}),
            "interval": "empirical 2.5 and 97.5 percentiles over the rounds",
            "std": "sample standard deviation (ddof=1) over the rounds",
            "groups": "by the number of visits in the record, the current one included",
            "conventions": CONVENTIONS,
        },
        "metrics": metrics,
        "groups": groups,
        "model": {
            "name": rec.name,
            "dir": str(rec.directory),
            "parameters": int(manifest.get("parameters", rec.model.num_parameters())),
            "manifest_sha256": sha256_file(Path(rec.directory) / MANIFEST),
            "created": manifest.get("created", ""),
            "trained_on": trained_on,
            "threshold_in_bundle": manifest.get("threshold"),
            "inference_ms_per_visit": 1000.0 * seconds / len(samples),
        },
        "data": {
            "source": str(data.manifest.get("source", "")),
            "dir": str(data.root),
            "hash": data.data_hash,
            "split": split,
            "n_visits": len(samples),
            "n_patients": len({s.patient_id for s in samples}),
            "same_cohort_as_model": bool(trained_on) and trained_on == data.data_hash,
        },
    }


def fit_calibration(
    model: str | Path | Bundle, data: str | Path | Dataset, method: str, split: str = "val"
) -> Calibration:
    """Fit a calibration of the model's own (uncalibrated) probabilities on ``split``."""
    rec, data = as_bundle(model), as_dataset(data)
    drug_columns(rec, data)  # refuse a model from other data
    return calibrate_on(rec.model, data, method, split)


def calibrate_bundle(
    model_dir: str | Path, data: str | Path | Dataset, method: str,
    out: str | Path | None = None, force: bool = False,
) -> tuple[Path, Calibration, dict[str, Any] | None]:
    """Fit ``method`` on the val split and store it in the bundle (at ``out``, default in place).
    On the bundle's own data the threshold, when it was tuned, is tuned again and the metrics
    are scored again on the calibrated probabilities (the rule is returned), so that the model
    card describes what ``recommend`` will do; on other data both are kept as they were."""
    rec, data = as_bundle(model_dir), as_dataset(data)
    cal = fit_calibration(rec, data, method)
    rule = metrics = None
    if data.data_hash == (rec.manifest.get("data") or {}).get("hash"):
        base = uncalibrated(rec.model)
        scorer = base if cal.method == "none" else CalibratedModel(base, cal)
        fixed = None if rec.manifest.get("threshold_tuning") else rec.threshold
        rule = decide_threshold(scorer, data, fixed, rec.max_drugs)
        metrics = split_metrics(scorer, data, rule["threshold"], rec.max_drugs)
    written = store_calibration(rec.directory, cal, out, force, rule=rule, metrics=metrics)
    return written, cal, rule


def calibrate_on(
    model: Any, data: Dataset, method: str, split: str = "val", probs: Any = None
) -> Calibration:
    """Fit ``method`` on ``model``'s own (uncalibrated) probabilities of ``split`` (``probs``:
    those probabilities when already computed)."""
    samples = split_samples(data, split)
    raw = uncalibrated(model).predict_proba(samples) if probs is None else probs
    y = multi_hot([s.target for s in samples], model.schema.drugs).numpy()
    return fit(np.asarray(raw, dtype=np.float64), y, method, split=split,
               data_hash=data.data_hash)
MIN_VISITS_TO_RANK = 200  # below this a test split rarely separates models (demo: 9 visits)
PAIRED_GROUPS = ("all", "first_visit", "returning")


def paired_differences(result: dict, reference: dict) -> dict[str, dict[str, dict]]:
    """``result`` minus ``reference``, round by round on the same resamples, per group and
    metric: mean difference and empirical 95% interval. Both must come from the same data,
    split, rounds, frac and seed (then the draws are identical)."""
    keys = ("split", "rounds", "frac", "seed", "sample_size")
    a, b = result["protocol"], reference["protocol"]
    if [a.get(k) for k in keys] != [b.get(k) for k in keys] or (
        result["data"]["hash"] != reference["data"]["hash"]
    ):
        raise LeaderError("paired differences need two evaluations of the same data and draws")
    out: dict[str, dict[str, dict]] = {}
    for g in PAIRED_GROUPS:
        ra, rb = result["groups"][g].get("rounds"), reference["groups"][g].get("rounds")
        if not ra or not rb:
            continue
        out[g] = {m: interval(np.subtract(ra[m], rb[m])) for m in ra}
    return out


def ranking_warning(n_visits: int) -> str | None:
    """A plain warning when the split is too small for a table to rank models."""
    if n_visits >= MIN_VISITS_TO_RANK:
        return None
    return (
        f"only {n_visits} visits in this split: too few to rank models (fewer than "
        f"{MIN_VISITS_TO_RANK}); read the paired 95% intervals, and do not rank models whose "
        "interval includes 0"
    )


def means(result: dict) -> dict[str, float]:
    """The flat ``{metric: mean}`` of an EVAL.json, as stored in a bundle's metrics.json."""
    return {m: v["mean"] for m, v in result["metrics"].items()}


def split_metrics(
    model: Any,
    data: Dataset,
    threshold: float = DEFAULT_THRESHOLD,
    max_drugs: int | None = None,
    probs: dict[str, np.ndarray] | None = None,
) -> dict:
    """Point metrics of an in-memory model on the val and test splits (no resampling), for the
    bundle's ``metrics.json``; a split without visits is left out. ``probs``: scores per split
    already computed."""
    out: dict[str, dict] = {}
    for split in ("val", "test"):
        samples = data.samples(split)
        if not samples:
            continue
        scores = (probs or {}).get(split)
        scores = np.asarray(model.predict_proba(samples) if scores is None else scores)
        values = per_visit(truth(samples, data), scores, data.ddi_matrix, threshold, max_drugs)
        out[split] = {**summarize(values), "n_visits": len(samples), "threshold": threshold}
    return out
