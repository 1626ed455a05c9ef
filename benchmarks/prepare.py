"""Benchmark `leader synth` and `leader prepare` at MIMIC-III and MIMIC-IV scale, per source.

Each step runs as its own child process (the installed `leader` CLI), so its wall time and peak
RSS (from ``os.wait4``) are its own and not mixed with this script's. Goal for `prepare` at
MIMIC-IV scale: under 120 s and 6 GiB peak RSS on 2 cores.

`omop` is `leader synth --format omop` at MIMIC-IV scale; `meds` is meds_etl's conversion of the
`mimic4` draw (run `mimic4` first or keep its RAW dir), made with scripts/meds-etl-convert.sh
from the meds_etl environment given by ``--meds-etl-venv``. Both are prepared with MIMIC-IV's
rules (``--top-procedures 1000``), so the three MIMIC-IV-scale runs do the same cohort work.

    .venv/bin/python benchmarks/prepare.py [--scales mimic3,mimic4,omop,meds] [--out bench-out]
        [--meds-etl-venv /tmp/medsetl-venv] [--report benchmarks/results/prepare.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

# format -> patients (MIMIC-III v1.4: 46k patients / 59k admissions / 4.2M prescription rows;
# MIMIC-IV v2.2: 300k / 431k / 15.4M)
SCALES = {"mimic3": 46_000, "mimic4": 300_000, "omop": 300_000, "meds": 300_000}
SAME_RULES_AS_MIMIC4 = ["--top-procedures", "1000"]
EXTRA_ARGS = {"omop": SAME_RULES_AS_MIMIC4, "meds": SAME_RULES_AS_MIMIC4}
CONVERT = Path(__file__).resolve().parent.parent / "scripts" / "meds-etl-convert.sh"
GOAL_SECONDS, GOAL_GIB = 120, 6


def run(cmd: list[str]) -> dict:
    """Run ``cmd``; return its wall seconds, peak RSS (GiB) and exit status."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux
    return {
        "cmd": shlex.join(cmd), "seconds": round(seconds, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "rc": proc.returncode, "tail": output.decode(errors="replace")[-3000:],
        # the machine may be shared: the 1-minute load average says how busy it was
        "load": f"{load_before:.1f} → {os.getloadavg()[0]:.1f}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="mimic3,mimic4")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--patients", type=int, help="override the patient count (smoke runs)")
    ap.add_argument("--skip-synth", action="store_true", help="reuse RAW dirs already there")
    ap.add_argument("--report", type=Path, help="write the results as Markdown here")
    ap.add_argument("--meds-etl-venv", type=Path, default=Path("/tmp/medsetl-venv"),
                    help="virtual environment with meds_etl (polars < 2) for the meds scale")
    args = ap.parse_args()
    leader = str(Path(sys.executable).parent / "leader")
    results = []
    for fmt in args.scales.split(","):
        patients = args.patients or SCALES[fmt]
        raw, data = args.out / f"raw-{fmt}", args.out / f"data-{fmt}"
        row: dict = {"format": fmt, "patients": patients}
        drawn = args.out / "raw-mimic4" if fmt == "meds" else raw
        if not args.skip_synth and fmt == "meds":
            row["synth"] = run(["bash", str(CONVERT), str(drawn), str(raw),
                                str(args.meds_etl_venv)])
        elif not args.skip_synth:
            row["synth"] = run([leader, "synth", "--format", fmt, "--patients", str(patients),
                                "--out", str(raw), "--seed", str(args.seed), "--force"])
        if "synth" in row:
            print(f"[{fmt}] synth: {row['synth']['seconds']} s, "
                  f"{row['synth']['peak_rss_gib']} GiB, rc {row['synth']['rc']}", flush=True)
            if row["synth"]["rc"] != 0:
                print(row["synth"]["tail"])
                return 1
        synth_manifest = json.loads((drawn / "synth_manifest.json").read_text())
        row["admissions"] = synth_manifest["admissions"]
        row["rows"] = synth_manifest["rows"]
        row["prepare"] = run([leader, "prepare", "--source", fmt, "--root", str(raw),
                              "--out", str(data), "--force", *EXTRA_ARGS.get(fmt, [])])
        print(f"[{fmt}] prepare: {row['prepare']['seconds']} s, "
              f"{row['prepare']['peak_rss_gib']} GiB, rc {row['prepare']['rc']}", flush=True)
        if row["prepare"]["rc"] != 0:
            print(row["prepare"]["tail"])
        else:
            stats = json.loads((data / "manifest.json").read_text())["stats"]
            row["cohort"] = {k: stats[k] for k in ("patients", "visits", "n_drugs")}
        results.append(row)
    if args.report:
        write_report(args.report, results, " ".join(shlex.quote(a) for a in sys.argv))
    return 0 if all(r["prepare"]["rc"] == 0 for r in results) else 1


def write_report(path: Path, results: list[dict], argv: str) -> None:
    lines = [
        "# `leader prepare` benchmark (synthetic MIMIC-scale raw tables, every source)",
        "",
        f"Command: `.venv/bin/python {argv}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}. Goal for prepare at MIMIC-IV scale: "
        f"< {GOAL_SECONDS} s and < {GOAL_GIB} GiB peak RSS on 2 cores.",
        "",
        "| format | patients | admissions | prescription rows | step | wall s | CPU s "
        "| peak RSS GiB | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rx = next(v for k, v in r["rows"].items()
                  if "prescriptions" in k.lower() or "drug_exposure" in k)
        for step in ("synth", "prepare"):
            if step in r:
                s = r[step]
                name = "meds_etl convert" if step == "synth" and r["format"] == "meds" else step
                lines.append(
                    f"| {r['format']} | {r['patients']:,} | {r['admissions']:,} | {rx:,} | {name} "
                    f"| {s['seconds']} | {s['cpu_seconds']} | {s['peak_rss_gib']} "
                    f"| {s.get('load', '')} |"
                )
    lines.append("")
    for r in results:
        if "cohort" in r:
            lines.append(f"- {r['format']} cohort: {r['cohort']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
