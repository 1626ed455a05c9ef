"""`leader compare`: several models on the same test resamples, as tables, figures and one HTML.

Every model goes through :func:`leader.evaluation.evaluate` with the same options; resample draws
depend only on (number of visits, rounds, frac, seed), so all models are scored on identical
draws. REPORT_DIR (written atomically) holds ``table.md``, ``table.json``, ``evals/<label>.json``
(each model's full EVAL.json), ``figures/*.png`` and ``report.html`` (self-contained: the figures
are embedded as base64 data URIs), plus ``manifest.json``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leader import calibration as calib
from leader.artifacts import atomic_dir, write_json, write_manifest
from leader.bundle import load
from leader.data.dataset import Dataset
from leader.errors import LeaderError
from leader.evaluation import (
    PAIRED_GROUPS,
    as_dataset,
    drug_columns,
    evaluate,
    fit_calibration,
    paired_differences,
    protocol_line,
    ranking_warning,
    split_samples,
    truth,
)
from leader.metrics import METRIC_LABELS as LABELS
from leader.metrics import METRICS

REPORT_KIND = "leader-report"
REPORT_FORMAT_VERSION = 1


def labels_for(model_dirs: Sequence[Path]) -> list[str]:
    """Directory names, made unique with their parent's name when two collide."""
    names = [Path(d).name for d in model_dirs]
    return [
        f"{Path(d).parent.name}/{n}" if names.count(n) > 1 else n
        for d, n in zip(model_dirs, names, strict=True)
    ]


def table_rows(evals: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for label, ev in evals.items():
        groups = ev["groups"]
        row = {
            "model": label,
            "name": ev["model"]["name"],
            **{m: ev["metrics"][m] for m in METRICS},
            "parameters": ev["model"]["parameters"],
            "inference_ms_per_visit": ev["model"]["inference_ms_per_visit"],
            "threshold": ev["protocol"]["threshold"],
        }
        for g in ("first_visit", "returning"):
            block = groups[g]["metrics"]
            row[f"{g}_jaccard"] = block["jaccard"]["mean"] if block else None
            row[f"{g}_n"] = groups[g]["n_visits"]
        rows.append(row)
    return rows


def _pm(v: dict) -> str:
    return f"{v['mean']:.4f} ± {v['std']:.4f}"


def markdown(rows: list[dict], protocol: str) -> str:
    head = ["model", *(LABELS[m] for m in METRICS), "params", "ms/visit",
            "Jaccard first / returning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fv, rt = r["first_visit_jaccard"], r["returning_jaccard"]
        split = f"{'-' if fv is None else f'{fv:.4f}'} / {'-' if rt is None else f'{rt:.4f}'}"
        lines.append(
            "| "
            + " | ".join(
                [r["model"], *(_pm(r[m]) for m in METRICS), f"{r['parameters']:,}",
                 f"{r['inference_ms_per_visit']:.3f}", split]
            )
            + " |"
        )
    return "\n".join(lines) + f"\n\nProtocol: {protocol}.\n"


PAIRED_SHOWN = ("jaccard", "prauc", "f1")


def paired_markdown(paired: dict[str, dict], reference: str) -> str:
    """Each model minus the reference, round by round: mean difference [95% interval]."""
    head = ["model"] + [
        f"Δ {LABELS[m]}" + ("" if g == "all" else f" ({g.replace('_', ' ')})")
        for g in PAIRED_GROUPS
        for m in (PAIRED_SHOWN if g == "all" else ("jaccard",))
    ]
    lines = [
        f"Paired differences against `{reference}` on the same resamples "
        "(mean difference [95% interval]; an interval that excludes 0 is a real difference "
        "on this split):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, groups in paired.items():
        cells = []
        for g in PAIRED_GROUPS:
            for m in PAIRED_SHOWN if g == "all" else ("jaccard",):
                d = groups.get(g, {}).get(m)
                cells.append("-" if d is None else
                             f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


# --- figures -----------------------------------------------------------------------------------


def _figures(rows: list[dict], evals: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    names = [r["model"] for r in rows]
    width = max(4.0, 0.8 * len(rows) + 2)
    for m in METRICS:
        fig, ax = plt.subplots(figsize=(width, 3.2))
        ax.bar(names, [r[m]["mean"] for r in rows], yerr=[r[m]["std"] for r in rows],
               capsize=4, color="#4c78a8")
        ax.set_ylabel(LABELS[m])
        ax.set_title(f"{LABELS[m]} (mean ± std over resamples)")
        ax.tick_params(axis="x", rotation=30)
        paths.append(_save(fig, out / f"metric_{m}.png"))

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for r in rows:
        ax.errorbar(r["ddi_rate"]["mean"], r["jaccard"]["mean"], xerr=r["ddi_rate"]["std"],
                    yerr=r["jaccard"]["std"], fmt="o", capsize=3)
        ax.annotate(r["model"], (r["ddi_rate"]["mean"], r["jaccard"]["mean"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("DDI rate (lower is safer)")
    ax.set_ylabel("Jaccard")
    ax.set_title("Accuracy against interaction risk")
    paths.append(_save(fig, out / "ddi_vs_jaccard.png"))

    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.4 * len(rows) + 3), 3.4))
    for ax, m in zip(axes, ("jaccard", "prauc"), strict=True):
        for k, (g, colour) in enumerate((("first_visit", "#f58518"), ("returning", "#4c78a8"))):
            means, stds = [], []
            for label in names:
                block = evals[label]["groups"][g]["metrics"]
                means.append(block[m]["mean"] if block else 0.0)
                stds.append(block[m]["std"] if block else 0.0)
            xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
            ax.bar(xs, means, 0.38, yerr=stds, capsize=3, color=colour,
                   label=g.replace("_", " "))
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_ylabel(LABELS[m])
        ax.legend(fontsize=8)
    fig.suptitle("First visit (no history) vs returning patients")
    paths.append(_save(fig, out / "groups.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(
    rows: list[dict], protocol: str, data: dict, figures: list[Path], extra: str = ""
) -> str:
    head = ["model", *(LABELS[m] for m in METRICS), "params", "ms/visit", "Jaccard first",
            "Jaccard returning"]
    body = []
    for r in rows:
        cells = [r["model"], *(_pm(r[m]) for m in METRICS), f"{r['parameters']:,}",
                 f"{r['inference_ms_per_visit']:.3f}",
                 *("-" if r[f"{g}_jaccard"] is None else f"{r[f'{g}_jaccard']:.4f}"
                   for g in ("first_visit", "returning"))]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    images = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leader compare</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Model comparison</h1>
<p>Data: {html.escape(str(data.get('source')))} ({html.escape(str(data.get('dir')))}),
{data.get('n_visits')} {html.escape(str(data.get('split')))} visits of
{data.get('n_patients')} patients; data hash {html.escape(str(data.get('hash'))[:16])}.</p>
<p>Protocol: {html.escape(protocol)}.</p>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>
{''.join(body)}</table>
{extra}
{images}
</body></html>
"""


# --- calibration -------------------------------------------------------------------------------


def calibration_rows(
    labels: Sequence[str], dirs: Sequence[Path], data: Dataset, split: str, method: str
) -> list[dict]:
    """ECE on ``split`` before (the model's own probabilities) and after calibration (the
    bundle's own, else ``method`` fitted on val), with both reliability tables."""
    samples = split_samples(data, split)
    y = truth(samples, data)
    rows = []
    for label, d in zip(labels, dirs, strict=True):
        rec = load(d)
        cols = drug_columns(rec, data)
        raw = np.asarray(calib.uncalibrated(rec.model).predict_proba(samples), dtype=np.float64)
        stored = calib.read(Path(d))
        if stored is not None and stored.method != "none":
            cal, source = stored, "stored in the bundle"
        elif method != "none":
            cal, source = fit_calibration(rec, data, method), "fitted on val for this report"
        else:
            cal, source = calib.Calibration("none"), "none"
        after = cal.apply(raw)
        rows.append({
            "model": label,
            "method": cal.method,
            "source": source,
            "temperature": cal.temperature,
            "isotonic_classes": len(cal.isotonic),
            "ece_before": calib.ece(raw[:, cols], y),
            "ece_after": calib.ece(after[:, cols], y),
            "reliability_before": calib.reliability(raw[:, cols], y),
            "reliability_after": calib.reliability(after[:, cols], y),
        })
    return rows


def calibration_markdown(rows: list[dict], split: str) -> str:
    lines = [f"\n## Calibration ({split} split, ECE over every visit × class, "
             f"{calib.BINS} bins)\n",
             "| model | method | T | isotonic classes | ECE before | ECE after | source |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['temperature']:.3f} | "
              f"{r['isotonic_classes']} | {r['ece_before']:.4f} | {r['ece_after']:.4f} | "
              f"{r['source']} |" for r in rows]
    return "\n".join(lines) + "\n"


def _reliability_figure(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    n_rows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.6 * cols, 3.4 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.ravel(), rows, strict=False):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls=":")
        for key, style, name in (("before", "--o", "before"), ("after", "-o", "after")):
            pts = [(b["confidence"], b["frequency"]) for b in r[f"reliability_{key}"] if b["n"]]
            ax.plot(*zip(*pts, strict=True), style, ms=3,
                    label=f"{name} (ECE {r[f'ece_{key}']:.3f})")
        ax.set_title(f"{r['model']} ({r['method']})", fontsize=9)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability: every visit × drug class")
    return _save(fig, out / "calibration.png")


def _cal_html(rows: list[dict]) -> str:
    head = ["model", "method", "T", "isotonic classes", "ECE before", "ECE after", "source"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["model"], r["method"], f"{r['temperature']:.3f}", r["isotonic_classes"],
            f"{r['ece_before']:.4f}", f"{r['ece_after']:.4f}", r["source"])) + "</tr>"
        for r in rows
    )
    return (f"<h2>Calibration</h2><p>Expected calibration error over every visit × drug class "
            f"({calib.BINS} equal-width bins); reliability diagrams below.</p>"
            f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>")


def compare(
    data: str | Path | Dataset,
    model_dirs: Sequence[str | Path],
    out: str | Path,
    rounds: int = 10,
    frac: float = 0.8,
    seed: int = 0,
    threshold: float | None = None,
    tune_threshold: bool = False,
    split: str = "test",
    force: bool = False,
    on_model: Callable[[str], None] | None = None,
    calibration: str = "temperature",
    reference: str | None = None,
) -> dict:
    """Evaluate every model on the same resamples and write REPORT_DIR; return table.json.

    ``reference``: a model's label (its directory name); every other model then gets its paired
    differences against it."""
    if not model_dirs:
        raise LeaderError("compare: give at least one MODEL_DIR")
    dirs = [Path(d) for d in model_dirs]
    dataset = as_dataset(data)
    labels = labels_for(dirs)
    if reference is not None and reference not in labels:
        raise LeaderError(f"reference {reference!r}: expected one of {', '.join(labels)}")
    evals: dict[str, dict] = {}
    for label, d in zip(labels, dirs, strict=True):
        if on_model:
            on_model(label)
        evals[label] = evaluate(d, dataset, split, rounds, frac, seed, threshold, tune_threshold)
    first = next(iter(evals.values()))
    protocol = {k: v for k, v in first["protocol"].items() if k not in ("threshold", "tuning")}
    thresholds = {k: e["protocol"]["threshold"] for k, e in evals.items()}
    rules = {e["protocol"]["threshold_rule"] for e in evals.values()}
    line = protocol_line(first["protocol"])
    if len(set(thresholds.values())) > 1 or len(rules) > 1:  # each model's own (tuned) rule
        protocol["thresholds"] = thresholds
        protocol["threshold_rules"] = {k: e["protocol"]["threshold_rule"] for k, e in
                                       evals.items()}
        shown = "; ".join(f"{k} {t:g}" for k, t in thresholds.items())
        rule = next(iter(rules)) if len(rules) == 1 else "each bundle's own rule"
        line = line.split(", threshold")[0] + f", thresholds {rule}: {shown}"
    rows = table_rows(evals)
    cal_rows = calibration_rows(labels, dirs, dataset, split, calibration)
    warning = ranking_warning(first["data"]["n_visits"])
    paired = {}
    if reference is not None:
        paired = {k: paired_differences(e, evals[reference]) for k, e in evals.items()
                  if k != reference}
    table = {"protocol": protocol, "protocol_line": line, "data": first["data"], "rows": rows,
             "metrics": list(METRICS), "calibration": cal_rows,
             "warnings": [warning] if warning else [], "reference": reference, "paired": paired}
    text = markdown(rows, line)
    if paired:
        text += "\n" + paired_markdown(paired, reference)
    if warning:
        text += f"\nWarning: {warning}.\n"
    text += calibration_markdown(cal_rows, split)
    with atomic_dir(out, force=force) as tmp:
        for label, ev in evals.items():
            (tmp / "evals").mkdir(exist_ok=True)
            write_json(tmp / "evals" / f"{label.replace('/', '__')}.json", ev)
        write_json(tmp / "table.json", table)
        (tmp / "table.md").write_text(text)
        figures = _figures(rows, evals, tmp / "figures")
        figures.append(_reliability_figure(cal_rows, tmp / "figures"))
        page = _html(rows, line, first["data"], figures, _cal_html(cal_rows))
        (tmp / "report.html").write_text(page)
        write_manifest(tmp, REPORT_KIND, REPORT_FORMAT_VERSION, models=[str(d) for d in dirs],
                       data=first["data"], protocol=protocol)
    return table
