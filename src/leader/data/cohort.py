"""Raw EHR tables → the prepared cohort (DATA_DIR): the cohort rules of the LEADER lineage.

Order of work, each step counted in the manifest so a reader can see where rows and visits went:

1. read the source (``sources/``, canonical frames), map prescriptions to ATC3 (``drugs.py``);
2. per code kind: drop rows without a code or with an admission that ADMISSIONS lacks,
   de-duplicate (admission, code), keep the top-k codes by the number of admissions using them;
3. keep a visit only with ≥1 diagnosis, ≥1 procedure and ≥1 drug left, then drop patients with
   fewer than ``min_visits`` visits (1 = single-visit patients are kept, as LEADER does);
4. order each patient's visits by admission time, attach the profile, split patients with a
   seeded shuffle, build vocabularies with titles, the DDI pairs and the statistics;
5. write everything with :func:`leader.data.dataset.write_dataset` inside ``atomic_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from leader.artifacts import atomic_dir, check_can_write, sha256_file
from leader.configs import ConfigError
from leader.data import ddi as ddi_mod
from leader.data import drugs as drug_map
from leader.data import sources
from leader.data.dataset import SPLITS, UNKNOWN, Vocab, age_bucket, write_dataset
from leader.data.sources.frames import RawTables, visit_profile
from leader.errors import LeaderError

Progress = Callable[[str], None]

STATS_KEYS = (
    "patients", "visits", "single_visit_patients", "visits_per_patient", "n_diagnoses",
    "n_procedures", "n_drugs", "diagnoses_per_visit", "procedures_per_visit", "drugs_per_visit",
    "ddi_pairs", "ddi_rate",
)


@dataclass
class PrepareConfig:
    """Every cohort rule, with the LEADER defaults. ``None`` for a top-k means uncapped."""

    drop_ndc_zero: bool = True  # prescription rows with NDC 0 or empty are dropped (lineage)
    top_drugs: int | None = 300
    top_diagnoses: int | None = 2000
    top_procedures: int | None = None  # MIMIC-IV: 1000, see for_source
    min_visits: int = 1  # 1 keeps single-visit patients; 2 is the GAMENet/SafeDrug cohort
    patient_fraction: float = 1.0  # a seeded share of patients (LEADER's MIMIC-IV: 0.15)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_from_data: bool = False  # the dataset's own split (MEDS subject_splits), not ours
    seed: int = 42
    ddi: str | None = None  # a CSV of ATC3 pairs; None = the bundled TWOSIDES-derived pairs

    @classmethod
    def for_source(cls, source: str, **overrides) -> PrepareConfig:
        """Defaults of ``source`` (MIMIC-IV caps procedures at 1000), then ``overrides``."""
        return cls(**{**sources.get(source).prepare_defaults, **overrides})

    def validate(self) -> None:
        for name in ("top_drugs", "top_diagnoses", "top_procedures"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, f"{value}: expected a positive count")
        if self.min_visits < 1:
            raise ConfigError("min_visits", f"{self.min_visits}: expected 1 or more")
        if not 0 < self.patient_fraction <= 1:
            raise ConfigError("patient_fraction",
                              f"{self.patient_fraction}: expected a share in (0, 1]")
        split = tuple(self.split)
        shares = ",".join(map(str, split))
        if len(split) != 3 or any(p < 0 for p in split) or abs(sum(split) - 1) > 1e-6:
            raise ConfigError("split", f"{shares}: expected three non-negative shares "
                              "(train,val,test) summing to 1, e.g. 0.8,0.1,0.1")
        if split[0] <= 0:
            raise ConfigError("split", f"{shares}: the train share must be > 0")

    def to_json(self) -> dict:
        out = asdict(self)
        out["split"] = list(self.split)
        return out


# ---------------------------------------------------------------------------------------------
# Steps


def _codes_per_visit(
    events: pl.DataFrame, admissions: pl.Series, top_k: int | None, kind: str, drops: dict
) -> pl.DataFrame:
    """(hadm_id, code) rows → one list of codes per admission, in first-seen order, top-k only.

    Frequency is the number of admissions using a code, counted before the visit filter, as the
    lineage does.
    """
    for column, what in (("hadm_id", "admission_id"), ("code", "code")):
        before = events.height
        events = events.filter(pl.col(column).is_not_null())
        drops[f"{kind}_rows_without_{what}"] = before - events.height
    before = events.height
    events = events.filter(pl.col("hadm_id").is_in(admissions.implode()))
    drops[f"{kind}_rows_admission_not_in_admissions"] = before - events.height
    before = events.height
    events = events.sort("_row").unique(["hadm_id", "code"], keep="first", maintain_order=True)
    drops[f"{kind}_rows_duplicate"] = before - events.height
    if top_k is not None:
        counts = events.group_by("code").len().sort(["len", "code"], descending=[True, False])
        keep = counts.head(top_k)["code"]
        before = events.height
        events = events.filter(pl.col("code").is_in(keep.implode()))
        drops[f"{kind}_rows_outside_top_{top_k}"] = before - events.height
        drops[f"{kind}_codes_outside_top_{top_k}"] = max(counts.height - top_k, 0)
    return events.group_by("hadm_id", maintain_order=True).agg(pl.col("code").alias(kind))


def _filter_visits(visits: pl.DataFrame, min_visits: int, drops: dict) -> pl.DataFrame:
    """Keep visits with all three code kinds, then patients with ≥ ``min_visits`` visits."""
    for kind in ("diagnoses", "procedures", "drugs"):
        before = visits.height
        visits = visits.filter(pl.col(kind).list.len().fill_null(0) > 0)
        drops[f"visits_without_{kind}"] = before - visits.height
    n_visits = pl.len().over("patient_id")
    short = visits.filter(n_visits < min_visits)
    drops["visits_of_patients_below_min_visits"] = short.height
    drops["patients_below_min_visits"] = short["patient_id"].n_unique()
    return visits.filter(n_visits >= min_visits)


def _sample_patients(
    admissions: pl.DataFrame, fraction: float, seed: int, drops: dict
) -> pl.DataFrame:
    """A seeded share of the patients, drawn before the cohort rules (so the top-k code cuts
    are counted on the sample, as a study restricted to those patients would count them)."""
    ids = admissions["patient_id"].unique().sort()
    keep = np.random.default_rng([seed, 1]).permutation(len(ids))[: round(fraction * len(ids))]
    kept = admissions.filter(pl.col("patient_id").is_in(ids.gather(np.sort(keep)).implode()))
    drops["patients_not_sampled"] = len(ids) - len(keep)
    drops["admissions_of_patients_not_sampled"] = admissions.height - kept.height
    return kept


def _split(patients: pl.Series, shares: tuple[float, float, float], seed: int) -> pl.DataFrame:
    """Patients → split, by a seeded permutation of the sorted ids (no patient in two splits)."""
    ids = patients.unique().sort()
    order = np.random.default_rng(seed).permutation(len(ids))
    cuts = np.round(np.cumsum(shares) * len(ids)).astype(int)
    label = np.empty(len(ids), dtype=object)
    label[order[: cuts[0]]] = SPLITS[0]
    label[order[cuts[0] : cuts[1]]] = SPLITS[1]
    label[order[cuts[1] :]] = SPLITS[2]
    return pl.DataFrame({"patient_id": ids, "split": pl.Series(label.tolist(), dtype=pl.String)})


def _vocab(visits: pl.DataFrame, kind: str, titles: dict[str, str]) -> tuple[Vocab, int]:
    """Codes of the kept visits, most frequent first (count = visits using the code)."""
    counts = (
        visits.select(pl.col(kind).explode().alias("code"))
        .group_by("code")
        .len()
        .sort(["len", "code"], descending=[True, False])
    )
    codes = counts["code"].to_list()
    missing = sum(1 for c in codes if not titles.get(c))
    names = [titles.get(c) or c for c in codes]
    return Vocab(codes, names, counts["len"].to_list()), missing


def _titles(raw: RawTables, table: str) -> dict[str, str]:
    lf = getattr(raw, table).drop_nulls(["code", "title"]).unique("code", keep="first")
    frame = raw.collect(table, lf)
    return dict(zip(frame["code"], frame["title"], strict=True))


def _short_titles(raw: RawTables, table: str) -> dict[str, str]:
    """Short titles per code, where the source has them (MIMIC-III); else empty."""
    lf = getattr(raw, table)
    if "short_title" not in lf.collect_schema().names():
        return {}
    frame = raw.collect(table, lf.drop_nulls(["code", "short_title"]).unique("code", keep="first"))
    return dict(zip(frame["code"], frame["short_title"], strict=True))


def _add_short_titles(vocab: Vocab, shorts: dict[str, str]) -> None:
    """Store short titles (for ``--titles short`` prompts), falling back to the long title."""
    if shorts:
        vocab.short_titles = [shorts.get(c) or t for c, t in zip(vocab.codes, vocab.titles,
                                                                   strict=True)]


def _profile_vocab(train: pl.DataFrame, fields: list[str]) -> dict[str, list[str]]:
    """Values seen in the train split per field, plus ``unknown``; age as decade buckets."""
    vocab = {}
    for f in fields:
        values = train[f].unique().to_list()
        if f == "age":
            values = [age_bucket(v) for v in values]
        vocab[f] = [UNKNOWN, *sorted({str(v) for v in values if v is not None} - {UNKNOWN})]
    return vocab


def _stats(visits: pl.DataFrame, vocab: dict[str, Vocab], pairs: list, rate: float) -> dict:
    per_patient = visits.group_by("patient_id").len()["len"]
    mean_len = {k: float(visits[k].list.len().mean()) for k in ("diagnoses", "procedures", "drugs")}
    stats = {
        "patients": per_patient.len(),
        "visits": visits.height,
        "single_visit_patients": int((per_patient == 1).sum()),
        "visits_per_patient": round(visits.height / per_patient.len(), 4),
        "n_diagnoses": len(vocab["diagnoses"]),
        "n_procedures": len(vocab["procedures"]),
        "n_drugs": len(vocab["drugs"]),
        "diagnoses_per_visit": round(mean_len["diagnoses"], 4),
        "procedures_per_visit": round(mean_len["procedures"], 4),
        "drugs_per_visit": round(mean_len["drugs"], 4),
        "ddi_pairs": len(pairs),
        "ddi_rate": round(rate, 6),
    }
    assert tuple(stats) == STATS_KEYS
    return stats


def _input_hashes(raw: RawTables) -> dict[str, str]:
    return {label: sha256_file(p) for label, p in raw.files.items()}


def _data_split(raw: RawTables, visits: pl.DataFrame, drops: dict) -> pl.DataFrame:
    """Patients → the split the dataset itself ships (MEDS ``subject_splits``); patients it
    does not list are dropped and counted."""
    if raw.splits is None:
        raise LeaderError(
            f"{raw.root}: source {raw.source} has no split of its own; expected a seeded split "
            "(train,val,test shares) instead"
        )
    splits = raw.collect("splits").unique("patient_id", keep="first", maintain_order=True)
    missing = visits.join(splits, on="patient_id", how="anti")
    drops["patients_not_in_data_split"] = missing["patient_id"].n_unique()
    return splits


def _map_drugs(raw: RawTables, drop_ndc_zero: bool) -> tuple[pl.DataFrame, dict]:
    """Prescription rows → (hadm_id, atc3) through the NDC/GSN/name routes, or through the
    source's own vocabulary (``atc3`` already set, route ``vocabulary``) where it names a class."""
    lf = raw.prescriptions
    vocabulary = "atc3" in lf.collect_schema().names()
    if vocabulary:
        lf = lf.rename({"atc3": "_atc_vocab"})
    mapped = drug_map.map_prescriptions(lf, drop_ndc_zero)
    if vocabulary:
        known = pl.col("_atc_vocab").is_not_null()
        mapped = mapped.with_columns(
            pl.when(known).then(pl.lit("vocabulary")).otherwise("route").alias("route"),
            pl.coalesce("_atc_vocab", "atc3").alias("atc3"),
        )
    rx = raw.collect("prescriptions", mapped.select("_row", "_bad", "hadm_id", "route", "atc3"))
    counts = drug_map.route_counts(rx)
    if vocabulary:
        counts = {"vocabulary": int((rx["route"] == "vocabulary").sum()), **counts}
    return rx, {"prescription_rows": rx.height, **counts}


# ---------------------------------------------------------------------------------------------
# The whole pipeline


def build_cohort(
    raw: RawTables, config: PrepareConfig, progress: Progress | None = None
) -> tuple[pl.DataFrame, dict]:
    """Raw tables → visits (one row per kept visit, with profile and split) and the bookkeeping
    (mapping counts and drops) for the manifest."""
    step = progress or (lambda _msg: None)
    drops: dict[str, int] = {}

    step("reading admissions and patients")
    admissions = raw.collect("admissions").drop("_row")
    before = admissions.height
    admissions = admissions.unique("hadm_id", keep="first", maintain_order=True)
    drops["admissions_duplicate_hadm_id"] = before - admissions.height
    patients = raw.collect("patients").drop("_row")
    patients = patients.unique("patient_id", keep="first", maintain_order=True)
    drops["admissions_without_patient"] = admissions.filter(
        ~pl.col("patient_id").is_in(patients["patient_id"].implode())
    ).height
    if admissions.height and drops["admissions_without_patient"] == admissions.height:
        raise LeaderError(
            f"{raw.labels.get('patients', 'patients')}: none of the {admissions.height} "
            f"admissions' patients is in it ({patients.height} patient rows); expected one row "
            "per patient with the admissions' patient ids"
        )
    if config.patient_fraction < 1:
        admissions = _sample_patients(admissions, config.patient_fraction, config.seed, drops)
    hadm = admissions["hadm_id"]

    step("reading diagnoses")
    dx = raw.collect("diagnoses")
    dx = _codes_per_visit(dx, hadm, config.top_diagnoses, "diagnoses", drops)
    step("reading procedures")
    px = raw.collect("procedures")
    px = _codes_per_visit(px, hadm, config.top_procedures, "procedures", drops)

    step("mapping prescriptions to ATC level 3")
    rx, mapping = _map_drugs(raw, config.drop_ndc_zero)
    drops["prescription_rows_ndc_zero_or_empty"] = mapping["no_ndc"]
    drops["prescription_rows_unmapped"] = mapping["unmapped"]
    rx = rx.select("_row", "hadm_id", pl.col("atc3").alias("code")).drop_nulls("code")
    rx = _codes_per_visit(rx, hadm, config.top_drugs, "drugs", drops)

    step("building visits")
    visits = (
        visit_profile(admissions, patients)
        .join(dx, on="hadm_id", how="left")
        .join(px, on="hadm_id", how="left")
        .join(rx, on="hadm_id", how="left")
    )
    visits = _filter_visits(visits, config.min_visits, drops)
    if visits.height == 0:
        lost = ", ".join(f"{k} {v}" for k, v in drops.items() if k.startswith("visits") and v)
        raise LeaderError(
            f"{raw.root}: no visits left after the cohort rules ({lost}); expected admissions "
            "with at least one diagnosis, procedure and mapped drug (check --min-visits, --top-*)"
        )
    fields = raw.profile_fields
    text_fields = [f for f in fields if f != "age"]
    visits = (
        visits.sort("patient_id", "admittime", "hadm_id")
        .with_columns(
            pl.int_range(pl.len()).over("patient_id").cast(pl.Int64).alias("visit_index"),
            *[pl.col(f).fill_null(UNKNOWN) for f in text_fields],
        )
    )
    if config.split_from_data:
        split = _data_split(raw, visits, drops)
    else:
        split = _split(visits["patient_id"], config.split, config.seed)
    visits = visits.join(split, on="patient_id")
    if visits.height == 0 or visits.filter(pl.col("split") == SPLITS[0]).height == 0:
        raise LeaderError(f"{raw.root}: no visits of the train split left after the cohort rules")
    visits = visits.select(
        pl.col("patient_id").cast(pl.String),
        pl.col("hadm_id").cast(pl.String),
        "visit_index",
        "admittime",
        "diagnoses",
        "procedures",
        "drugs",
        *fields,
        "split",
    )
    return visits, {"admissions_read": admissions.height, "mapping": mapping, "drops": drops}


def prepare(
    source: str,
    root: str | Path,
    out: str | Path,
    config: PrepareConfig | None = None,
    force: bool = False,
    progress: Progress | None = None,
    options: dict[str, str] | None = None,
) -> dict:
    """Prepare the cohort of ``source`` tables under ``root`` into DATA_DIR ``out``; return
    the manifest. ``options``: the source's own settings. Raises LeaderError on bad input,
    before anything is written."""
    sources.get(source)
    out = check_can_write(out, force)
    config = config or PrepareConfig.for_source(source)
    config.validate()
    step = progress or (lambda _msg: None)
    pairs, ddi_source = ddi_mod.load_pairs(config.ddi)  # a bad --ddi fails before the long work

    raw = sources.read(source, root, options)
    visits, bookkeeping = build_cohort(raw, config, step)

    step("vocabularies and titles")
    titles = {
        "diagnoses": _titles(raw, "dx_titles"),
        "procedures": _titles(raw, "px_titles"),
        "drugs": drug_map.atc3_names(),
    }
    vocab, titles_missing = {}, {}
    for kind, names in titles.items():
        vocab[kind], titles_missing[kind] = _vocab(visits, kind, names)
    _add_short_titles(vocab["diagnoses"], _short_titles(raw, "dx_titles"))
    _add_short_titles(vocab["procedures"], _short_titles(raw, "px_titles"))
    profile_vocab = _profile_vocab(visits.filter(pl.col("split") == "train"), raw.profile_fields)

    step("drug interactions")
    kept_pairs = ddi_mod.restrict_pairs(pairs, vocab["drugs"].codes)
    rate = ddi_mod.ddi_rate(visits["drugs"], kept_pairs, vocab["drugs"])

    step("hashing inputs")
    ddi_file = Path(config.ddi) if config.ddi else ddi_mod.DEFAULT_DDI
    fields = {
        "source": source,
        "root": str(raw.root),
        "config": config.to_json(),
        **({"source_options": dict(options)} if options else {}),
        "inputs": _input_hashes(raw),
        "resources": {
            **{f"drugs/{n}": sha256_file(drug_map.resource(n)) for n in drug_map.MAPPING_FILES},
            "ddi": {"file": str(ddi_file), "sha256": sha256_file(ddi_file)},
        },
        "ddi": {
            "source": ddi_source, "pairs_in_file": len(pairs), "pairs_in_vocab": len(kept_pairs)
        },
        **bookkeeping,
        "titles_missing": titles_missing,
        "splits": dict(visits.group_by("split").agg(pl.col("patient_id").n_unique()).iter_rows()),
        "stats": _stats(visits, vocab, kept_pairs, rate),
        "profile_fields": raw.profile_fields,
    }

    step("writing")
    with atomic_dir(out, force=force) as tmp:
        manifest = write_dataset(
            tmp, visits, vocab, profile_vocab, kept_pairs, ddi_source, **fields
        )
    return manifest
