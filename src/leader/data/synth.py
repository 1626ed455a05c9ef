"""`leader synth`: synthetic raw MIMIC tables in the exact MIMIC-III / MIMIC-IV file layout.

Why: the real releases need credentialed access, so tests, demos and benchmarks need raw tables
that `prepare` reads like the real ones, with drugs drawn from a planted model (``additive``:
:mod:`leader.data.synth_model`; ``clinical``, the default: its prescribing rules in
:mod:`leader.data.synth_clinical`) and that model's exact per-class probabilities written to
``ground_truth.parquet`` (so an oracle, the best any model can do, can be scored). Noise rows are
added on top of the planted ones (NDC "0" with a name that maps to nothing, unmappable products,
exact duplicates), so they never remove a planted class.

Generation streams in fixed chunks of patients (vectorised numpy, no per-row Python loops) into
gzip CSV writers, so MIMIC-IV scale (300k patients, ~15M prescription rows) fits in memory.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from leader.artifacts import atomic_dir, read_json, write_manifest
from leader.data import synth_clinical
from leader.data.synth_clinical import GENERATORS, ClinicalConfig, Rules
from leader.data.synth_model import (
    DDI_DROP,
    FORMATS,
    SPECS,
    TARGET_CLASSES_FIRST_VISIT,
    Model,
    build_model,
    choice,
    draw,
    draw_codes,
    draw_drugs,
    draw_patients,
    expand_admissions,
    read_resource,
    static_logits,
    visit_counts,
)
from leader.data.synth_omop import OmopWriters
from leader.errors import LeaderError

SYNTH_KIND = "leader-synth"
SYNTH_FORMAT_VERSION = 1
SYNTH_MANIFEST = "synth_manifest.json"
GROUND_TRUTH = "ground_truth.parquet"
CHUNK_PATIENTS = 5000  # fixed, so the output for a seed does not depend on the total size
GZIP_LEVEL = 1

# Column layouts (MIMIC-III v1.4 full release: the demo's lower-case names in upper case;
# MIMIC-IV v2.2 hosp/).
M3_COLUMNS = {
    "ADMISSIONS": [
        "ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME",
        "ADMISSION_TYPE", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE",
        "RELIGION", "MARITAL_STATUS", "ETHNICITY", "EDREGTIME", "EDOUTTIME", "DIAGNOSIS",
        "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA",
    ],
    "PATIENTS": [
        "ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD", "DOD_HOSP", "DOD_SSN", "EXPIRE_FLAG",
    ],
    "DIAGNOSES_ICD": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    "PROCEDURES_ICD": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
    "PRESCRIPTIONS": [
        "ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "STARTDATE", "ENDDATE", "DRUG_TYPE",
        "DRUG", "DRUG_NAME_POE", "DRUG_NAME_GENERIC", "FORMULARY_DRUG_CD", "GSN", "NDC",
        "PROD_STRENGTH", "DOSE_VAL_RX", "DOSE_UNIT_RX", "FORM_VAL_DISP", "FORM_UNIT_DISP",
        "ROUTE",
    ],
    "D_ICD_DIAGNOSES": ["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
    "D_ICD_PROCEDURES": ["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
}
M4_COLUMNS = {
    "admissions": [
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
        "admit_provider_id", "admission_location", "discharge_location", "insurance",
        "language", "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag",
    ],
    "patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
    "diagnoses_icd": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    "procedures_icd": ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"],
    "prescriptions": [
        "subject_id", "hadm_id", "pharmacy_id", "poe_id", "poe_seq", "order_provider_id",
        "starttime", "stoptime", "drug_type", "drug", "formulary_drug_cd", "gsn", "ndc",
        "prod_strength", "form_rx", "dose_val_rx", "dose_unit_rx", "form_val_disp",
        "form_unit_disp", "doses_per_24_hrs", "route",
    ],
    "d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
    "d_icd_procedures": ["icd_code", "icd_version", "long_title"],
}
STREAMED = ("admissions", "patients", "diagnoses_icd", "procedures_icd", "prescriptions")

NOISE_SHARES = {"ndc0": 0.05, "unmapped": 0.02, "duplicate": 0.03}
# formats written by re-shaping another format's draw: name → writer (its source_format: the draw)
RESHAPED = {"omop": OmopWriters}


# ----------------------------------------------------------------------------- one chunk → frames


def _dt(seconds: np.ndarray) -> pl.Series:
    return pl.Series(seconds.astype(np.int64) * 1000).cast(pl.Datetime("ms"))


def _strings(values: dict[str, float], idx: np.ndarray) -> pl.Series:
    """The drawn categorical values; "" stands for a missing value (an empty CSV field)."""
    return pl.Series([v or None for v in values], dtype=pl.String).gather(idx)


@dataclass
class Ids:
    """Identifiers fixed before streaming, so chunks need no coordination."""

    subject: np.ndarray
    hadm: np.ndarray
    counts: np.ndarray


def _make_ids(fmt: str, patients: int, seed: int) -> Ids:
    rng = np.random.default_rng([seed, 2])
    counts = visit_counts(SPECS[fmt], patients, rng)
    total = int(counts.sum())
    if fmt == "mimic3":
        subject = 1 + np.sort(rng.permutation(max(2 * patients, 1000))[:patients])
        hadm = 100000 + rng.permutation(max(int(1.6 * total), 100000))[:total]
    else:
        subject = 10000000 + np.sort(rng.permutation(max(3 * patients, 10000))[:patients])
        hadm = 20000000 + rng.permutation(max(3 * total, 1000000))[:total]
    return Ids(subject=subject, hadm=hadm, counts=counts)


@dataclass
class Chunk:
    """The frames of one chunk of patients, keyed by MIMIC-IV table name."""

    frames: dict[str, pl.DataFrame]
    truth: pa.Table


def _draw_drugs(model: Model, rules: Rules | None, adm: dict, dx: dict, px: dict,
                rng) -> tuple[np.ndarray, np.ndarray]:
    """The drawn classes and their exact marginals, by the additive model or the rules."""
    if rules is None:
        return draw_drugs(model, adm, static_logits(model, adm, dx, px), rng)
    obs = synth_clinical.observe(model, rules, adm, dx, px)
    return synth_clinical.draw_drugs(model, rules, adm, obs, rng)


def _chunk(model: Model, ids: Ids, lo: int, hi: int, adm_lo: int, seed: int,
           rules: Rules | None = None) -> Chunk:
    rng = np.random.default_rng([seed, 3, lo])
    fmt, prof = model.fmt, model.spec.profile
    pats = draw_patients(model, hi - lo, rng)
    adm = expand_admissions(model, pats, ids.counts[lo:hi], rng)
    n = len(adm["pat"])
    dx = draw_codes(model, "dx", adm, rng)
    px = draw_codes(model, "px", adm, rng)
    taken, prob = _draw_drugs(model, rules, adm, dx, px, rng)

    subject = ids.subject[lo:hi][adm["pat"]]
    hadm = ids.hadm[adm_lo:adm_lo + n]
    last = np.r_[adm["first"][1:] - 1, n - 1]  # each patient's last admission
    expire = np.zeros(n, bool)
    expire[last] = rng.random(len(last)) < 0.08
    deathtime = np.where(expire, adm["disch"], 0)
    frames: dict[str, pl.DataFrame] = {}

    # MIMIC-IV: the real year of each admission (behind anchor_year_group) sets its ICD version.
    real0 = rng.uniform(2008, 2020, hi - lo)
    years = (adm["admit"] - adm["admit"][adm["first"]][adm["pat"]]) / (365.25 * 86400)
    icd10 = (real0[adm["pat"]] + years) >= 2015.75

    adm_frame = {
        "subject_id": subject, "hadm_id": hadm,
        "admittime": _dt(adm["admit"]), "dischtime": _dt(adm["disch"]),
        "deathtime": _dt(deathtime).set(pl.Series(~expire), None),
        "admission_type": _strings(prof["admission_type"], adm["admission_type"]),
        "admission_location": _strings(prof["admission_location"],
                                       choice(rng, prof["admission_location"], n)),
        "discharge_location": _strings(prof["discharge_location"],
                                       choice(rng, prof["discharge_location"], n)),
        "insurance": _strings(prof["insurance"], adm["insurance"]),
        "language": _strings(prof["language"], pats["language"][adm["pat"]]),
        "marital_status": _strings(prof["marital_status"], pats["marital_status"][adm["pat"]]),
        "race": _strings(prof["race"], pats["race"][adm["pat"]]),
        "hospital_expire_flag": expire.astype(np.int8),
    }
    died = "DEAD/EXPIRED" if fmt == "mimic3" else "DIED"
    adm_frame["discharge_location"] = adm_frame["discharge_location"].set(
        pl.Series(expire), died
    )
    emergency = np.char.find(
        np.array(list(prof["admission_type"]))[adm["admission_type"]].astype(str), "EM"
    ) >= 0
    adm_frame["edregtime"] = _dt(adm["admit"] - 3 * 3600).set(pl.Series(~emergency), None)
    adm_frame["edouttime"] = _dt(adm["admit"] + 3600).set(pl.Series(~emergency), None)

    # Patients: one row each; dod from an in-hospital death, else sometimes later.
    later = rng.random(hi - lo) < 0.1
    died_in = expire[last]
    after = adm["disch"][last] + rng.integers(1, 900, hi - lo) * 86400
    dod = np.where(died_in, adm["disch"][last], np.where(later, after, 0))
    first_admit = adm["admit"][adm["first"]]
    gender = np.where(pats["gender"] == 1, "M", "F")

    if fmt == "mimic4":
        anchor_year = 2110 + ((first_admit - np.datetime64("2110-01-01", "s").astype(np.int64))
                              // int(365.25 * 86400)).astype(int)
        group0 = (np.floor(real0).astype(int) - 2008) // 3 * 3 + 2008
        frames["patients"] = pl.DataFrame({
            "subject_id": ids.subject[lo:hi], "gender": gender,
            "anchor_age": np.where(pats["age"] >= 90, 91, pats["age"]),
            "anchor_year": anchor_year,
            "anchor_year_group": [f"{g} - {g + 2}" for g in group0],
            "dod": _dt(dod).set(pl.Series(dod == 0), None).dt.date(),
        })
        adm_frame["admit_provider_id"] = model.providers[rng.integers(0, 2000, n)]
        frames["admissions"] = pl.DataFrame(adm_frame).select(M4_COLUMNS["admissions"])
    else:
        # DOB from the age at the first admission; over 89 shifted by 300 years as in MIMIC-III.
        years_back = np.where(pats["age"] >= 90, 300, pats["age"])
        dob_days = (first_admit // 86400) - (years_back * 365.25).astype(int) - rng.integers(
            1, 365, hi - lo)
        frames["patients"] = pl.DataFrame({
            "subject_id": ids.subject[lo:hi], "gender": gender,
            "dob": _dt(dob_days * 86400),
            "dod": _dt(dod // 86400 * 86400).set(pl.Series(dod == 0), None),
            "dod_hosp": _dt(dod // 86400 * 86400).set(pl.Series(~died_in), None),
            "dod_ssn": _dt(dod // 86400 * 86400).set(pl.Series(dod == 0), None),
            "expire_flag": (dod > 0).astype(np.int8),
        })
        first_dx = np.full(n, -1)
        first_dx[dx["visit"][dx["seq"] == 1]] = dx["code"][dx["seq"] == 1]
        adm_frame["religion"] = _strings(prof["religion"], pats["religion"][adm["pat"]])
        adm_frame["ethnicity"] = adm_frame.pop("race")
        adm_frame["diagnosis"] = pl.Series(
            np.char.upper(model.dx.short[np.maximum(first_dx, 0)].astype(str))
        )
        adm_frame["has_chartevents_data"] = np.ones(n, np.int8)
        frames["admissions"] = pl.DataFrame(adm_frame)

    for kind, codes in (("diagnoses_icd", dx), ("procedures_icd", px)):
        book = model.dx if kind == "diagnoses_icd" else model.px
        v = codes["visit"]
        frame = {"subject_id": subject[v], "hadm_id": hadm[v], "seq_num": codes["seq"]}
        if kind == "procedures_icd" and fmt == "mimic4":
            frame["chartdate"] = _dt(adm["admit"][v] + rng.integers(0, 3, len(v)) * 86400)
            frame["chartdate"] = frame["chartdate"].dt.date()
        if fmt == "mimic4":
            ten = icd10[v]
            frame["icd_code"] = np.where(ten, book.icd10[codes["code"]], book.codes[codes["code"]])
            frame["icd_version"] = np.where(ten, 10, 9).astype(np.int8)
            df = pl.DataFrame(frame).unique(["hadm_id", "icd_code"], maintain_order=True)
            frames[kind] = df.with_columns(
                seq_num=pl.int_range(1, pl.len() + 1).over("hadm_id")
            ).select(M4_COLUMNS[kind])
        else:
            frame["icd9_code"] = book.codes[codes["code"]]
            frames[kind] = pl.DataFrame(frame)

    frames["prescriptions"] = _prescriptions(model, adm, taken, subject, hadm, lo, rng)
    truth = _truth_table(model, subject, hadm, adm["k"], taken, prob)
    return Chunk(frames=frames, truth=truth)


def _prescriptions(
    model: Model, adm: dict, taken: np.ndarray, subject, hadm, lo: int, rng
) -> pl.DataFrame:
    """Rows per drawn class (each a product of that class), then noise rows and duplicates."""
    visit, cls = np.nonzero(taken)
    reps = 1 + rng.poisson(model.spec.rows_per_class, len(visit))
    visit, cls = np.repeat(visit, reps), np.repeat(cls, reps)
    product = draw(model.prod_cum, model.prod_flat, cls, rng)
    # Noise on top of the planted rows: NDC "0" and unmappable products in prescribing visits.
    extra = []
    with_rx = np.flatnonzero(taken.any(1))
    for kind in ("ndc0", "unmapped"):
        m = int(round(NOISE_SHARES[kind] * len(visit)))
        if m and len(with_rx) and len(model.noise_products[kind]):
            extra.append((rng.choice(with_rx, m), rng.choice(model.noise_products[kind], m)))
    for v, p in extra:
        visit, product = np.r_[visit, v], np.r_[product, p]
    m = len(visit)
    los = adm["disch"][visit] - adm["admit"][visit]
    start = adm["admit"][visit] + (rng.random(m) * 0.8 * los).astype(np.int64)
    stop = np.minimum(start + rng.integers(3600, 5 * 86400, m), adm["disch"][visit] + 86400)
    # Exact duplicates: copies of whole rows, identifiers included.
    dup = rng.choice(m, int(round(NOISE_SHARES["duplicate"] * m))) if m else np.zeros(0, int)
    provider, doses = rng.integers(0, len(model.providers), m), rng.integers(1, 5, m)
    ident = np.r_[np.arange(m), dup]
    order = np.lexsort((ident, start[ident], visit[ident]))
    ident = ident[order]
    visit, product, start, stop = visit[ident], product[ident], start[ident], stop[ident]
    m = len(visit)

    prod = model.products[product]
    if model.fmt == "mimic3":
        day = 86400
        return pl.DataFrame({
            "subject_id": subject[visit], "hadm_id": hadm[visit],
            "icustay_id": pl.Series(200000 + lo + visit).set(  # a third outside the ICU
                pl.Series(visit % 3 == 0), None),
            "startdate": _dt(start // day * day), "enddate": _dt(stop // day * day),
            "drug_type": prod["drug_type"], "drug": prod["drug"],
            "drug_name_poe": prod["drug"], "drug_name_generic": prod["drug"],
            "formulary_drug_cd": prod["formulary_drug_cd"], "gsn": prod["gsn"],
            "ndc": prod["ndc"], "prod_strength": prod["prod_strength"],
            "dose_val_rx": prod["dose_val_rx"], "dose_unit_rx": prod["dose_unit_rx"],
            "form_val_disp": prod["dose_val_rx"], "form_unit_disp": prod["form_unit_disp"],
            "route": prod["route_admin"],
        })
    return pl.DataFrame({
        "subject_id": subject[visit], "hadm_id": hadm[visit],
        "pharmacy_id": lo * 1000 + ident,
        "poe_seq": ident,
        "order_provider_id": model.providers[provider[ident]],
        "starttime": _dt(start), "stoptime": _dt(stop),
        "drug_type": prod["drug_type"], "drug": prod["drug"],
        "formulary_drug_cd": prod["formulary_drug_cd"], "gsn": prod["gsn"], "ndc": prod["ndc"],
        "prod_strength": prod["prod_strength"], "form_rx": prod["form_rx"],
        "dose_val_rx": prod["dose_val_rx"], "dose_unit_rx": prod["dose_unit_rx"],
        "form_val_disp": prod["dose_val_rx"], "form_unit_disp": prod["form_unit_disp"],
        "doses_per_24_hrs": doses[ident].astype(np.int8),
        "route": prod["route_admin"],
    }).with_columns(
        poe_seq=pl.col("poe_seq") - pl.col("poe_seq").min().over("subject_id") + 1
    ).with_columns(
        poe_id=pl.col("subject_id").cast(pl.String) + "-" + pl.col("poe_seq").cast(pl.String)
    ).select(M4_COLUMNS["prescriptions"])


def _truth_table(model, subject, hadm, k, taken, prob) -> pa.Table:
    classes = np.array(model.classes)
    v, c = np.nonzero(taken)
    drug_offsets = np.r_[0, np.cumsum(taken.sum(1))].astype(np.int32)
    prob_offsets = (np.arange(len(k) + 1) * model.n_classes).astype(np.int32)
    return pa.table({
        "subject_id": pa.array(subject.astype(str)),
        "hadm_id": pa.array(hadm.astype(str)),
        "visit_index": pa.array(k.astype(np.int32)),
        "drugs": pa.ListArray.from_arrays(drug_offsets, pa.array(classes[c])),
        # 4 decimals: ~3x smaller (dictionary-encoded) at no cost to any metric
        "prob": pa.ListArray.from_arrays(prob_offsets, pa.array(np.round(prob.ravel(), 4))),
    })


# ------------------------------------------------------------------------------------- writing


def _file_names(fmt: str) -> dict[str, str]:
    """MIMIC-IV table name -> path inside the output directory."""
    if fmt == "mimic4":
        return {t: f"hosp/{t}.csv.gz" for t in M4_COLUMNS}
    return {t.lower(): f"{t}.csv.gz" for t in M3_COLUMNS}


class _Writers:
    """One gzip CSV stream per table; the header goes with the first chunk only."""

    def __init__(self, root: Path, fmt: str):
        self.fmt, self.root = fmt, root
        self.names = _file_names(fmt)
        self.files: dict[str, Any] = {}
        self.rows = {t: 0 for t in self.names}

    def write(self, table: str, df: pl.DataFrame) -> None:
        if table not in self.files:
            path = self.root / self.names[table]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[table] = gzip.open(path, "wb", compresslevel=GZIP_LEVEL)
        if self.fmt == "mimic3":
            df = df.with_row_index("row_id", offset=self.rows[table] + 1)
            df = df.rename({c: c.upper() for c in df.columns}).select(M3_COLUMNS[table.upper()])
        df.write_csv(
            self.files[table], include_header=self.rows[table] == 0,
            datetime_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d",
            quote_style="non_numeric" if self.fmt == "mimic3" else "necessary",
        )
        self.rows[table] += df.height

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _write_dictionaries(writers: _Writers, model: Model) -> None:
    """D_ICD_* tables: the full ICD-9 dictionary, plus (MIMIC-IV) the ICD-10 images of the
    drawn codes, titled with their source ICD-9 title."""
    for table, book in (("d_icd_diagnoses", model.dx), ("d_icd_procedures", model.px)):
        full = read_resource("mimic-iii-demo", f"{table.upper()}.csv").drop("row_id")
        if model.fmt == "mimic3":
            writers.write(table, full)
            continue
        nine = full.select(icd_code="icd9_code", icd_version=pl.lit(9), long_title="long_title")
        ten = pl.DataFrame({"icd_code": book.icd10, "icd_version": 10, "long_title": book.long})
        ten = ten.unique("icd_code", keep="first", maintain_order=True)
        both = pl.concat([nine, ten]).with_columns(pl.col("icd_version").cast(pl.Int8))
        writers.write(table, both)


def synthesize(
    out: Path,
    fmt: str,
    patients: int,
    seed: int,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    generator: str = "clinical",
    config: ClinicalConfig | None = None,
) -> dict:
    """Write synthetic raw MIMIC tables, ground truth and ``synth_manifest.json`` to ``out``.

    ``generator`` is ``clinical`` (the prescribing rules, tuned by ``config``) or ``additive``
    (the original model, byte-identical to earlier releases for a seed). Returns the summary
    that also goes into the manifest.
    """
    reshaped = RESHAPED.get(fmt)
    if fmt not in FORMATS and reshaped is None:
        raise LeaderError(f"--format: expected one of {', '.join((*FORMATS, *RESHAPED))}, "
                          f"got {fmt!r}")
    draw_fmt = reshaped.source_format if reshaped else fmt
    if generator not in GENERATORS:
        raise LeaderError(
            f"--generator: expected one of {', '.join(GENERATORS)}, got {generator!r}")
    if patients < 1:
        raise LeaderError(f"--patients: expected a positive number, got {patients}")
    started = time.perf_counter()
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        model = build_model(draw_fmt, seed)
        rules = (synth_clinical.build_rules(model, seed, config) if generator == "clinical"
                 else None)
        ids = _make_ids(draw_fmt, patients, seed)
        writers = reshaped(tmp) if reshaped else _Writers(tmp, fmt)
        schema = pa.schema([
            ("subject_id", pa.string()), ("hadm_id", pa.string()), ("visit_index", pa.int32()),
            ("drugs", pa.list_(pa.string())), ("prob", pa.list_(pa.float32())),
        ], metadata={"classes": ",".join(model.classes)})
        truth = pq.ParquetWriter(tmp / GROUND_TRUTH, schema, compression="zstd")
        visits_with_drugs = classes_drawn = 0
        try:
            _write_dictionaries(writers, model)
            adm_lo = 0
            for lo in range(0, patients, CHUNK_PATIENTS):
                hi = min(lo + CHUNK_PATIENTS, patients)
                chunk = _chunk(model, ids, lo, hi, adm_lo, seed, rules)
                adm_lo += int(ids.counts[lo:hi].sum())
                for table in STREAMED:
                    writers.write(table, chunk.frames[table])
                truth.write_table(chunk.truth.cast(schema))
                sizes = chunk.truth["drugs"].combine_chunks().value_lengths().to_numpy()
                visits_with_drugs += int((sizes > 0).sum())
                classes_drawn += int(sizes.sum())
                if progress:
                    progress(hi, patients)
        finally:
            writers.close()
            truth.close()
        summary = {
            "format": fmt, "generator": generator, "seed": seed, "patients": patients,
            "admissions": int(ids.counts.sum()),
            "single_visit_patients": int((ids.counts == 1).sum()),
            "rows": {writers.names[t]: n for t, n in writers.rows.items()},
            "drug_classes": len(model.classes),
            "mean_classes_per_prescribing_visit": round(classes_drawn / max(1, visits_with_drugs),
                                                        3),
            "ddi_pairs": len(model.ddi_a if rules is None else rules.ddi_a),
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_manifest(
            tmp, SYNTH_KIND, SYNTH_FORMAT_VERSION,
            **summary, classes=model.classes, ground_truth=GROUND_TRUTH,
            model={
                "ddi_drop": DDI_DROP,
                "target_classes_first_visit": TARGET_CLASSES_FIRST_VISIT,
                "chunk_patients": CHUNK_PATIENTS,
                "rules": rules.describe() if rules is not None else None,
            },
        )
        # A raw MIMIC directory is not a leader artifact: keep its manifest under its own name.
        (tmp / "manifest.json").rename(tmp / SYNTH_MANIFEST)
    summary["out"] = str(out)
    return summary


def read_ground_truth(raw_dir: str | Path) -> tuple[list[str], pl.DataFrame]:
    """The generator's drug classes (column order of ``prob``) and per-admission truth."""
    raw_dir = Path(raw_dir)
    manifest = read_json(raw_dir / SYNTH_MANIFEST)
    if manifest.get("kind") != SYNTH_KIND:
        raise LeaderError(f"{raw_dir / SYNTH_MANIFEST}: kind is not {SYNTH_KIND!r}")
    path = raw_dir / GROUND_TRUTH
    if not path.is_file():
        raise LeaderError(f"{path}: file not found")
    return list(manifest["classes"]), pl.read_parquet(path)
