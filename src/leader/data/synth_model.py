"""The planted generator behind `leader synth`: real codes, a fixed random drug model.

Why: tests, demos and benchmarks need raw tables whose drugs carry a known, learnable signal. The
generator is a fixed random model (drawn from the seed) in which each ATC level-3 drug class of a
visit is a Bernoulli draw whose logit adds up:

- a long-tailed base rate per class,
- effects of the visit's diagnoses (per ICD-9 three-character category, per ICD chapter, and per
  clinical keyword of the code *title*, e.g. "hypertension" -> C09A, so a reader of titles can
  exploit them), and of its procedures (per two-digit ICD-9 procedure category),
- persistence of the previous admission's drug classes (per-class weight),
- profile effects (age group, gender, insurance, admission type).

Interacting class pairs (the bundled TWOSIDES-derived ATC3 pairs) are then thinned: when both
were drawn, the less common one is dropped with probability ``DDI_DROP``. Given what a model can
observe, the exact marginal probability of each class is known, so an oracle can be scored.

Every drug class is planted through real codes that map back to it: an NDC from the bundled
NDC -> ATC3 table, else a GSN from the GSN table (with an NDC no table knows), or for a share of
products only a drug name from the name table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

FORMATS = ("mimic3", "mimic4")
DDI_DROP = 0.7  # chance to drop the rarer class of an interacting pair drawn together
TARGET_CLASSES_FIRST_VISIT = 13.0  # calibrated mean number of drug classes on a first visit
MAX_VISITS = 40

RES = resources.files("leader.data") / "resources"


@dataclass(frozen=True)
class FormatSpec:
    """Per-format shape of the data, tuned to the published table sizes."""

    single_share: float  # patients with one admission
    extra_p: float  # visits beyond two ~ geometric(extra_p)
    rows_per_class: float  # prescription rows per drawn class ~ 1 + Poisson(this)
    procedure_share: float  # admissions that have any procedure row
    profile: dict[str, dict[str, float]]  # field -> value -> weight ("" = missing)


SPECS = {
    # MIMIC-III: 46k patients, 59k admissions (1.28 each), 4.2M prescription rows (~71 each).
    "mimic3": FormatSpec(
        single_share=0.76, extra_p=0.857, rows_per_class=4.1, procedure_share=0.85,
        profile={
            "insurance": {"Medicare": 48, "Private": 38, "Medicaid": 10, "Government": 3,
                          "Self Pay": 1},
            "language": {"ENGL": 55, "SPAN": 3, "RUSS": 1, "PTUN": 1, "CANT": 1, "": 39},
            "religion": {"CATHOLIC": 35, "NOT SPECIFIED": 20, "UNOBTAINABLE": 13,
                         "PROTESTANT QUAKER": 13, "JEWISH": 8, "OTHER": 4, "EPISCOPALIAN": 1,
                         "BUDDHIST": 1, "": 5},
            "marital_status": {"MARRIED": 45, "SINGLE": 28, "WIDOWED": 13, "DIVORCED": 6,
                               "SEPARATED": 1, "": 7},
            "race": {"WHITE": 70, "BLACK/AFRICAN AMERICAN": 9, "HISPANIC OR LATINO": 3,
                     "ASIAN": 3, "UNKNOWN/NOT SPECIFIED": 8, "OTHER": 3, "UNABLE TO OBTAIN": 2,
                     "PATIENT DECLINED TO ANSWER": 1},
            "admission_type": {"EMERGENCY": 80, "ELECTIVE": 16, "URGENT": 4},
            "admission_location": {"EMERGENCY ROOM ADMIT": 45, "PHYS REFERRAL/NORMAL DELI": 25,
                                   "TRANSFER FROM HOSP/EXTRAM": 15,
                                   "CLINIC REFERRAL/PREMATURE": 15},
            "discharge_location": {"HOME": 35, "HOME HEALTH CARE": 25, "SNF": 20,
                                   "REHAB/DISTINCT PART HOSP": 15, "LONG TERM CARE HOSPITAL": 5},
        },
    ),
    # MIMIC-IV v2.2: 300k patients, 431k admissions (1.44 each), 15.4M prescription rows (~36).
    "mimic4": FormatSpec(
        single_share=0.70, extra_p=0.682, rows_per_class=1.45, procedure_share=0.5,
        profile={
            "insurance": {"Medicare": 40, "Medicaid": 10, "Other": 50},
            "language": {"ENGLISH": 90, "?": 10},
            "marital_status": {"MARRIED": 40, "SINGLE": 35, "WIDOWED": 12, "DIVORCED": 8,
                               "": 5},
            "race": {"WHITE": 63, "BLACK/AFRICAN AMERICAN": 14, "HISPANIC/LATINO - PUERTO RICAN": 2,
                     "WHITE - OTHER EUROPEAN": 2, "ASIAN": 2, "ASIAN - CHINESE": 1, "UNKNOWN": 6,
                     "OTHER": 4, "UNABLE TO OBTAIN": 1, "HISPANIC OR LATINO": 2,
                     "BLACK/CAPE VERDEAN": 1, "WHITE - RUSSIAN": 1, "PORTUGUESE": 1},
            "admission_type": {"EW EMER.": 35, "EU OBSERVATION": 18, "OBSERVATION ADMIT": 12,
                               "URGENT": 10, "SURGICAL SAME DAY ADMISSION": 8, "DIRECT EMER.": 5,
                               "DIRECT OBSERVATION": 5, "ELECTIVE": 4,
                               "AMBULATORY OBSERVATION": 3},
            "admission_location": {"EMERGENCY ROOM": 50, "PHYSICIAN REFERRAL": 20,
                                   "TRANSFER FROM HOSPITAL": 10, "WALK-IN/SELF REFERRAL": 10,
                                   "CLINIC REFERRAL": 10},
            "discharge_location": {"HOME": 45, "HOME HEALTH CARE": 25,
                                   "SKILLED NURSING FACILITY": 15, "REHAB": 5, "": 10},
        },
    ),
}

# Title keyword -> drug classes: clinically sensible links a reader of code titles can exploit.
KEYWORD_DRUGS = [
    (r"hypertens", ["C09A", "C07A", "C08C", "C03A"]),
    (r"diabet", ["A10A", "A10B"]),
    (r"heart failure", ["C03C", "C07A", "C09A", "C01A"]),
    (r"atrial fibrillation|atrial flutter", ["B01A", "C01B", "C07A"]),
    (r"pneumonia|sepsis|septic|infection|cellulitis", ["J01D", "J01C", "J01X", "J01M", "J01F"]),
    (r"pain", ["N02A", "N02B"]),
    (r"depress", ["N06A"]),
    (r"anxiety", ["N05B"]),
    (r"hyperlipid|hypercholest", ["C10A"]),
    (r"asthma|chronic airway|chronic obstructive|bronchitis", ["R03A", "R03B", "H02A"]),
    (r"epilep|convulsion|seizure", ["N03A"]),
    (r"ulcer|reflux|gastritis|esophagitis", ["A02B"]),
    (r"constipation", ["A06A"]),
    (r"anemia", ["B03A", "B03B"]),
    (r"hypothyroid", ["H03A"]),
    (r"insomnia", ["N05C"]),
    (r"nausea|vomiting", ["A04A"]),
    (r"coronary|angina|myocardial infarction", ["B01A", "C10A", "C07A", "C01D"]),
    (r"schizophren|psychos", ["N05A"]),
    (r"alcohol", ["N05B", "A11D"]),
    (r"hypokalemia|hypopotass", ["A12B"]),
    (r"gout", ["M04A"]),
    (r"parkinson", ["N04B"]),
    (r"candid|mycos", ["J02A"]),
    (r"herpes|human immunodeficiency", ["J05A"]),
    (r"malignant neoplasm", ["L01X", "A04A"]),
]
KEYWORD_WEIGHT = 5.0
COMMON_FIRST = ["N02B", "A06A", "B01A", "A02B", "N02A", "A12C", "C07A", "B05X", "J01D", "A04A"]

NDC0_NAMES = ["Sodium Chloride 0.9%  Flush", "NS", "D5W", "SW", "Iso-Osmotic Dextrose",
              "NS (Mini Bag Plus)", "Syringe (Chemo)", "Bag", "1/2 NS", "D5 1/2NS"]
UNMAPPED_NAMES = ["Study Drug", "Patient's Own Medication", "Investigational Agent X",
                  "Compounded Solution", "Outside Medication", "Research Protocol Agent"]
# (form_rx, dose_unit_rx, form_unit_disp, route, drug_type, strength unit, strength values)
FORMS = [
    ("TABLET", "mg", "TAB", "PO", "MAIN", "mg Tab", [1, 2.5, 5, 10, 20, 25, 40, 50, 100, 250]),
    ("CAPSULE", "mg", "CAP", "PO", "MAIN", "mg Cap", [5, 10, 20, 50, 100, 200, 300]),
    ("SOLN", "mg", "VIAL", "IV", "MAIN", "mg Vial", [1, 2, 10, 40, 100, 500, 1000]),
    ("SOLN", "mL", "BAG", "IV DRIP", "BASE", "mL Bag", [50, 100, 250, 500, 1000]),
    ("SYRINGE", "mg", "SYR", "SC", "MAIN", "mg/mL Syringe", [1, 5, 30, 40, 5000]),
    ("INHALER", "puff", "INH", "IH", "MAIN", "mcg Inhaler", [18, 50, 90, 100]),
]

# --------------------------------------------------------------------------- code dictionaries


def read_resource(*parts: str) -> pl.DataFrame:
    with resources.as_file(RES.joinpath(*parts)) as p:
        return pl.read_csv(p, infer_schema=False)


def _icd9_chapter(code: str) -> str:
    """The ICD-9-CM diagnosis chapter (001-139 infectious, ..., V and E supplementary)."""
    if code[0] in "VE":
        return code[0]
    bounds = [139, 239, 279, 289, 319, 389, 459, 519, 579, 629, 679, 709, 739, 759, 779, 799]
    n = int(code[:3])
    return str(next((i for i, b in enumerate(bounds) if n <= b), len(bounds)))


def _first_icd10(gems: pl.DataFrame) -> dict[str, str]:
    """One deterministic ICD-10 target per ICD-9 code (GEMs forward map, 'no map' skipped)."""
    ok = gems.filter(~pl.col("icd_10").str.starts_with("No"))
    first = ok.group_by("icd_9", maintain_order=True).agg(pl.col("icd_10").first())
    return dict(zip(first["icd_9"], first["icd_10"], strict=True))


@dataclass
class Codes:
    """ICD-9 codes of one kind that the generator draws, with titles and ICD-10 images."""

    codes: np.ndarray  # str
    short: np.ndarray
    long: np.ndarray
    icd10: np.ndarray
    category: np.ndarray  # int id of the planted-effect group


def _load_codes(kind: str) -> Codes:
    table = "D_ICD_DIAGNOSES.csv" if kind == "dx" else "D_ICD_PROCEDURES.csv"
    gems = "icd_cm_9_to_10_mapping.csv.gz" if kind == "dx" else "icd_pcs_9_to_10_mapping.csv.gz"
    d = read_resource("mimic-iii-demo", table)
    to10 = _first_icd10(read_resource("drugs", gems))
    d = d.filter(pl.col("icd9_code").is_in(list(to10))).sort("icd9_code")
    codes = d["icd9_code"].to_numpy()
    prefix = 3 if kind == "dx" else 2
    _, category = np.unique([c[:prefix] for c in codes], return_inverse=True)
    return Codes(
        codes=codes,
        short=d["short_title"].to_numpy(),
        long=d["long_title"].to_numpy(),
        icd10=np.array([to10[c] for c in codes]),
        category=category,
    )


# ------------------------------------------------------------------------------- drug products


def _drug_catalog(fmt: str, rng: np.random.Generator) -> tuple[list[str], pl.DataFrame]:
    """Drug classes and the products that plant them (cls -1: noise that maps to nothing).

    Only codes that map to exactly one ATC3 class are used, so ``prepare`` recovers the class.
    """
    ndc = read_resource("drugs", "atc2rxnorm_ndc2atc3.csv")
    level3 = pl.col("atc3").str.len_chars() == 4  # codes of ATC levels 1-2 name no class
    gsn = read_resource("drugs", "gsn_atc_ndc_mapping.csv.gz").with_columns(
        atc3=pl.col("atc").str.slice(0, 4)
    )
    names = read_resource("drugs", "mimic_drug_to_atc.csv.gz").with_columns(
        atc3=pl.col("atc_code").str.slice(0, 4)
    )
    gsn_known, names_known = gsn, names
    gsn, names = gsn.filter(level3), names.filter(level3)
    gsn_ok = gsn.group_by("gsn").agg(pl.col("atc3").n_unique().alias("n"), pl.col("atc3").first())
    gsn_ok = gsn_ok.filter(pl.col("n") == 1).sort("gsn")
    name_ok = names.group_by("drug").agg(pl.col("atc3").n_unique().alias("n"),
                                         pl.col("atc3").first())
    name_ok = name_ok.filter(pl.col("n") == 1).sort("drug")
    known_names = {n.strip().lower() for n in names_known["drug"].to_list()}
    known_ndcs = set(ndc["ndc"].to_list()) | set(gsn_known["ndc"].to_list())

    ndc_by = ndc.sort("ndc").group_by("atc3", maintain_order=True).agg("ndc")
    ndc_by = dict(zip(ndc_by["atc3"], ndc_by["ndc"].to_list(), strict=True))
    gsn_by = gsn_ok.group_by("atc3", maintain_order=True).agg("gsn")
    gsn_by = dict(zip(gsn_by["atc3"], gsn_by["gsn"].to_list(), strict=True))
    name_by = name_ok.group_by("atc3", maintain_order=True).agg("drug")
    name_by = dict(zip(name_by["atc3"], name_by["drug"].to_list(), strict=True))
    classes = sorted(set(ndc_by) | set(gsn_by))

    def fake_ndc(prefix: str) -> str:
        while True:
            s = prefix + "".join(rng.choice(list("0123456789"), 11 - len(prefix)))
            if s not in known_ndcs:
                known_ndcs.add(s)
                return s

    rows: list[dict[str, Any]] = []

    def product(cls: int, route: str, ndc_code: str, gsns: list[str], name: str) -> None:
        form = FORMS[int(rng.integers(len(FORMS)))]
        strength = form[6][int(rng.integers(len(form[6])))]
        multi = fmt == "mimic4" and len(gsns) > 1 and rng.random() < 0.3
        first = gsns[0] if gsns else ""
        gsn_field = " ".join(gsns[: int(rng.integers(2, 4))]) if multi else first
        rows.append({
            "cls": cls, "route": route, "ndc": ndc_code, "gsn": gsn_field or None, "drug": name,
            "formulary_drug_cd": re.sub(r"[^A-Z0-9]", "", name.upper())[:6] + str(strength)[:3],
            "prod_strength": f"{strength} {form[5]}", "form_rx": form[0],
            "dose_unit_rx": form[1], "form_unit_disp": form[2], "route_admin": form[3],
            "drug_type": form[4], "dose_val_rx": str(strength),
        })

    for ci, c in enumerate(classes):
        cls_names = name_by.get(c) or [c]

        def pick(options: list[str] = cls_names) -> str:
            return options[int(rng.integers(len(options)))]

        gsns = list(gsn_by.get(c, []))
        if c in ndc_by:  # NDC route; the GSN field, when filled, agrees with the class
            for code in ndc_by[c][:12]:
                g = [gsns[i] for i in rng.permutation(len(gsns))[:3]] if rng.random() < 0.7 else []
                product(ci, "ndc", code, g, pick())
        else:  # GSN route: an NDC that no table knows
            for k in range(min(6, len(gsns))):
                product(ci, "gsn", fake_ndc("99"), gsns[k:] + gsns[:k], pick())
        if c in name_by:  # drug-name route: unknown NDC, no GSN
            product(ci, "name", fake_ndc("99"), [], pick())
    for name in NDC0_NAMES:
        if name.lower() not in known_names:
            product(-1, "ndc0", "0", [], name)
    for name in UNMAPPED_NAMES:
        if name.lower() not in known_names:
            product(-1, "unmapped", fake_ndc("98"), [], name)
    return classes, pl.DataFrame(rows)


# ------------------------------------------------------------------------------ the fixed model


def _flat_cdf(weights: list[np.ndarray], items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate several discrete distributions so that one searchsorted samples them all.

    Distribution s occupies the interval [s, s+1): draw with ``searchsorted(cum, s + u)``.
    """
    cums, flat = [], []
    for s, w in enumerate(weights):
        c = np.cumsum(w, dtype=np.float64)
        c = s + c / c[-1]
        c[-1] = s + 1.0
        cums.append(c)
        flat.append(items[s])
    return np.concatenate(cums), np.concatenate(flat)


def draw(cum: np.ndarray, flat: np.ndarray, source: np.ndarray, rng) -> np.ndarray:
    u = rng.random(len(source))
    idx = np.searchsorted(cum, source + u, side="right")
    return flat[np.minimum(idx, len(flat) - 1)]


def _zipf(n: int, rng: np.random.Generator, power: float = 1.1, shift: float = 5.0) -> np.ndarray:
    """Long-tailed popularity over n items in random order."""
    w = 1.0 / (np.arange(n) + shift) ** power
    return w[rng.permutation(n)]


@dataclass
class Model:
    """The planted generator: code popularity, topics, and the drug-logit weights."""

    fmt: str
    spec: FormatSpec
    dx: Codes
    px: Codes
    classes: list[str]
    products: pl.DataFrame
    dx_cum: np.ndarray  # sources: topics 0..T-1, background T
    dx_flat: np.ndarray
    px_cum: np.ndarray
    px_flat: np.ndarray
    topic_pop: np.ndarray
    dx_feat: sparse.csr_matrix  # dx code -> features (category, chapter, keywords)
    w_dx: np.ndarray  # features x classes
    w_px: np.ndarray  # px categories x classes
    w_profile: dict[str, np.ndarray]  # field -> values x classes
    persistence: np.ndarray  # classes
    bias: np.ndarray  # classes
    ddi_a: np.ndarray  # dominant class of each interacting pair
    ddi_to_b: np.ndarray  # pairs x classes: one-hot of the class each pair may drop
    prod_cum: np.ndarray  # per class: products
    prod_flat: np.ndarray
    noise_products: dict[str, np.ndarray]
    providers: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)


AGE_EDGES = np.array([30, 40, 50, 60, 70, 80, 90])
N_TOPICS = 48


def build_model(fmt: str, seed: int) -> Model:
    """Draw the fixed generator for (format, seed)."""
    rng = np.random.default_rng([seed, 0])
    spec = SPECS[fmt]
    dx, px = _load_codes("dx"), _load_codes("px")
    classes, products = _drug_catalog(fmt, rng)
    n_cls = len(classes)

    # Code popularity and topics (a topic: a few categories of one chapter, plus some others).
    dx_pop, px_pop = _zipf(len(dx.codes), rng), _zipf(len(px.codes), rng)
    chapters = np.array([_icd9_chapter(c) for c in dx.codes])
    dx_w, dx_items, px_w, px_items = [], [], [], []
    for _ in range(N_TOPICS):
        chap = rng.choice(chapters, p=dx_pop / dx_pop.sum())
        in_chap = np.flatnonzero(chapters == chap)
        cats = set(rng.choice(dx.category[in_chap], 4, p=dx_pop[in_chap] / dx_pop[in_chap].sum()))
        cats |= set(rng.choice(dx.category, 2, p=dx_pop / dx_pop.sum()))
        members = np.flatnonzero(np.isin(dx.category, list(cats)))
        dx_w.append(dx_pop[members] + dx_pop[members].mean())
        dx_items.append(members)
        pcats = rng.choice(px.category, 3, p=px_pop / px_pop.sum())
        members = np.flatnonzero(np.isin(px.category, pcats))
        px_w.append(px_pop[members] + px_pop[members].mean())
        px_items.append(members)
    dx_w.append(dx_pop)
    dx_items.append(np.arange(len(dx.codes)))
    px_w.append(px_pop)
    px_items.append(np.arange(len(px.codes)))
    dx_cum, dx_flat = _flat_cdf(dx_w, dx_items)
    px_cum, px_flat = _flat_cdf(px_w, px_items)

    # Class base rates: long-tailed, the usual inpatient staples first.
    common = [classes.index(c) for c in COMMON_FIRST if c in classes]
    rest = [i for i in rng.permutation(n_cls) if i not in common]
    rank = np.empty(n_cls)
    rank[common + rest] = np.arange(n_cls)
    bias = -1.2 * np.log1p(rank) + rng.normal(0, 0.3, n_cls)
    pop = np.exp(bias)
    pop /= pop.sum()

    # Diagnosis features: category (sparse targets), chapter (dense, small), title keywords.
    n_cat = dx.category.max() + 1
    chap_ids, chap_of = np.unique(chapters, return_inverse=True)
    kw_rows, kw_cls = [], []
    for k, (_, targets) in enumerate(KEYWORD_DRUGS):
        for t in targets:
            if t in classes:
                kw_rows.append(k)
                kw_cls.append(classes.index(t))
    lower = pl.Series(dx.long).str.to_lowercase()
    code_kw = [
        (np.flatnonzero(lower.str.contains(pattern).to_numpy()), k)
        for k, (pattern, _) in enumerate(KEYWORD_DRUGS)
    ]
    n_feat = n_cat + len(chap_ids) + len(KEYWORD_DRUGS)
    feat_rows = [np.arange(len(dx.codes)), np.arange(len(dx.codes))]
    feat_cols = [dx.category, n_cat + chap_of]
    for codes_hit, k in code_kw:
        feat_rows.append(codes_hit)
        feat_cols.append(np.full(len(codes_hit), n_cat + len(chap_ids) + k))
    r, c = np.concatenate(feat_rows), np.concatenate(feat_cols)
    dx_feat = sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)), (len(dx.codes), n_feat))

    w_dx = np.zeros((n_feat, n_cls), np.float32)
    p_target = np.sqrt(pop) / np.sqrt(pop).sum()
    for g in range(n_cat):
        t = rng.choice(n_cls, int(rng.integers(1, 4)), replace=False, p=p_target)
        w_dx[g, t] = rng.uniform(3.0, 5.0, len(t))
    w_dx[n_cat:n_cat + len(chap_ids)] = rng.normal(0, 0.25, (len(chap_ids), n_cls))
    w_dx[n_cat + len(chap_ids) + np.array(kw_rows, int), np.array(kw_cls, int)] = KEYWORD_WEIGHT
    n_pcat = px.category.max() + 1
    w_px = np.zeros((n_pcat, n_cls), np.float32)
    for g in range(n_pcat):
        t = rng.choice(n_cls, int(rng.integers(1, 3)), replace=False, p=p_target)
        w_px[g, t] = rng.uniform(2.0, 4.0, len(t))

    w_profile = {
        "age": rng.normal(0, 0.35, (len(AGE_EDGES) + 1, n_cls)).astype(np.float32),
        "gender": rng.normal(0, 0.2, (2, n_cls)).astype(np.float32),
        "insurance": rng.normal(0, 0.25, (len(spec.profile["insurance"]), n_cls)),
        "admission_type": rng.normal(0, 0.25, (len(spec.profile["admission_type"]), n_cls)),
    }
    persistence = rng.uniform(1.5, 3.5, n_cls).astype(np.float32)

    # DDI: the more common class of an interacting pair wins.
    pairs = read_resource("drugs", "atc3_interactions.csv")
    idx = {c: i for i, c in enumerate(classes)}
    a = np.array([idx.get(x, -1) for x in pairs["atc3_a"]])
    b = np.array([idx.get(x, -1) for x in pairs["atc3_b"]])
    keep = (a >= 0) & (b >= 0) & (a != b)
    a, b = a[keep], b[keep]
    swap = rank[a] > rank[b]
    ddi_a, ddi_b = np.where(swap, b, a), np.where(swap, a, b)
    ddi_to_b = np.zeros((len(ddi_b), n_cls), np.float32)
    ddi_to_b[np.arange(len(ddi_b)), ddi_b] = 1.0

    # Products per class: the name-route product gets about a tenth of its class's rows.
    cls_col = products["cls"].to_numpy()
    route = products["route"].to_numpy()
    pw, pitems = [], []
    for ci in range(n_cls):
        members = np.flatnonzero(cls_col == ci)
        w = np.where(route[members] == "name", 0.1, 0.9 / max(1, (route[members] != "name").sum()))
        pw.append(w * _zipf(len(members), rng, 0.8, 1.0))
        pitems.append(members)
    prod_cum, prod_flat = _flat_cdf(pw, pitems)
    noise_products = {k: np.flatnonzero(route == k) for k in ("ndc0", "unmapped")}
    letters = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
    providers = np.array(["P" + "".join(rng.choice(letters, 5)) for _ in range(2000)])

    model = Model(
        fmt=fmt, spec=spec, dx=dx, px=px, classes=classes, products=products,
        dx_cum=dx_cum, dx_flat=dx_flat, px_cum=px_cum, px_flat=px_flat,
        topic_pop=_zipf(N_TOPICS, rng, 0.8, 2.0), dx_feat=dx_feat, w_dx=w_dx, w_px=w_px,
        w_profile=w_profile, persistence=persistence, bias=bias.astype(np.float32),
        ddi_a=ddi_a, ddi_to_b=ddi_to_b, prod_cum=prod_cum, prod_flat=prod_flat,
        noise_products=noise_products, providers=providers,
    )
    _calibrate(model, np.random.default_rng([seed, 1]))
    return model


def _ddi_marginal(model: Model, p: np.ndarray) -> np.ndarray:
    """P(class kept) = p_b * prod over dominant partners a of (1 - DDI_DROP * p_a).

    Exact because the draws of different classes are independent given the observables.
    """
    keep = np.log1p(-DDI_DROP * p[:, model.ddi_a]) @ model.ddi_to_b
    return (p * np.exp(keep)).astype(np.float32)


def _calibrate(model: Model, rng: np.random.Generator) -> None:
    """Shift the base rates so a first visit has TARGET_CLASSES_FIRST_VISIT classes on average."""
    pats = draw_patients(model, 2000, rng)
    adm = expand_admissions(model, pats, np.ones(2000, int), rng)
    dx = draw_codes(model, "dx", adm, rng)
    px = draw_codes(model, "px", adm, rng)
    base = static_logits(model, adm, dx, px)
    lo, hi = -10.0, 10.0
    for _ in range(24):  # a 20 / 2**24 bracket: far below any visible effect
        mid = (lo + hi) / 2
        p = 1 / (1 + np.exp(-(base + mid)))
        mean = _ddi_marginal(model, p).sum(1).mean()
        lo, hi = (mid, hi) if mean < TARGET_CLASSES_FIRST_VISIT else (lo, mid)
    model.bias = model.bias + np.float32((lo + hi) / 2)


# ---------------------------------------------------------------------- patients and admissions


def choice(rng, table: dict[str, float], n: int) -> np.ndarray:
    """Indices into ``table``'s values, drawn with its weights."""
    w = np.array(list(table.values()), float)
    return rng.choice(len(w), n, p=w / w.sum())


def draw_patients(model: Model, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    prof = model.spec.profile
    age = np.clip(rng.normal(62, 17, n), 18, 100).astype(int)
    ins = choice(rng, prof["insurance"], n)
    medicare = list(prof["insurance"]).index("Medicare")
    ins = np.where((age >= 65) & (rng.random(n) < 0.8), medicare, ins)
    topics = rng.choice(N_TOPICS, (n, 2), p=model.topic_pop / model.topic_pop.sum())
    return {
        "age": age, "gender": (rng.random(n) < 0.45).astype(int), "insurance": ins,
        "language": choice(rng, prof["language"], n),
        "religion": choice(rng, prof.get("religion", {"": 1}), n),
        "marital_status": choice(rng, prof["marital_status"], n),
        "race": choice(rng, prof["race"], n), "topics": topics,
        "start": rng.uniform(0, 1, n),  # position of the first admission in the date range
    }


def visit_counts(spec: FormatSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    extra = rng.geometric(spec.extra_p, n) - 1
    counts = np.where(rng.random(n) < spec.single_share, 1, 2 + extra)
    return np.minimum(counts, MAX_VISITS)


def expand_admissions(model: Model, pats: dict, counts: np.ndarray, rng) -> dict[str, np.ndarray]:
    """One row per admission, patient-major, oldest first; times in seconds from the epoch."""
    n = counts.sum()
    pat = np.repeat(np.arange(len(counts)), counts)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    k = np.arange(n) - np.repeat(first, counts)
    los = np.exp(rng.normal(np.log(4 * 86400), 0.7, n)).clip(6 * 3600, 60 * 86400)
    gap = rng.exponential(250 * 86400, n) + 86400
    gap[first] = 0
    # cumulative (previous stay + gap) within each patient
    step = np.where(k > 0, np.roll(los, 1) + gap, 0)
    offset = np.cumsum(step) - np.repeat(np.cumsum(step)[first], counts)
    if model.fmt == "mimic3":
        span0, span = np.datetime64("2100-01-01", "s"), 100 * 365 * 86400
    else:
        span0, span = np.datetime64("2110-01-01", "s"), 76 * 365 * 86400
    t0 = span0.astype(np.int64) + (pats["start"] * span).astype(np.int64)
    admit = t0[pat] + offset.astype(np.int64) + rng.integers(0, 86400, n)
    adm_type = choice(rng, model.spec.profile["admission_type"], n)
    return {
        "pat": pat, "gender": pats["gender"][pat], "insurance": pats["insurance"][pat],
        "k": k, "admit": admit, "disch": admit + los.astype(np.int64),
        "age": pats["age"][pat] + (offset / (365.25 * 86400)).astype(int),
        "admission_type": adm_type, "first": first,
        "has_px": rng.random(n) < model.spec.procedure_share,
        "has_rx": rng.random(n) < 0.96,
        "topics": pats["topics"][pat],
    }


def draw_codes(model: Model, kind: str, adm: dict, rng) -> dict[str, np.ndarray]:
    """Distinct codes per admission (first-drawn order = seq_num), topic-driven."""
    n = len(adm["pat"])
    if kind == "dx":
        counts = 1 + rng.poisson(11.5, n)
        cum, flat, topic_share = model.dx_cum, model.dx_flat, 0.55
    else:
        counts = np.where(adm["has_px"], 1 + rng.poisson(2.5, n), 0)
        cum, flat, topic_share = model.px_cum, model.px_flat, 0.6
    visit = np.repeat(np.arange(n), counts)
    which = rng.integers(0, 2, len(visit))
    source = np.where(
        rng.random(len(visit)) < topic_share, adm["topics"][visit, which], N_TOPICS
    )
    code = draw(cum, flat, source, rng)
    n_codes = len(model.dx.codes) if kind == "dx" else len(model.px.codes)
    _, first = np.unique(visit.astype(np.int64) * n_codes + code, return_index=True)
    first.sort()
    visit, code = visit[first], code[first]
    starts = np.searchsorted(visit, np.arange(n))
    seq = np.arange(len(visit)) - starts[visit] + 1
    return {"visit": visit, "code": code, "seq": seq}


def _onehot_rows(visit: np.ndarray, cols: np.ndarray, n: int, m: int) -> sparse.csr_matrix:
    x = sparse.csr_matrix((np.ones(len(visit), np.float32), (visit, cols)), (n, m))
    x.data[:] = 1.0
    return x


def static_logits(model: Model, adm: dict, dx: dict, px: dict) -> np.ndarray:
    """Everything in the drug logits except persistence (which needs the previous visit)."""
    n = len(adm["pat"])
    x_dx = _onehot_rows(dx["visit"], dx["code"], n, len(model.dx.codes)) @ model.dx_feat
    x_dx.data[:] = 1.0  # each feature counts once per visit
    x_px = _onehot_rows(px["visit"], model.px.category[px["code"]], n, model.w_px.shape[0])
    logits = np.asarray(x_dx @ model.w_dx) + np.asarray(x_px @ model.w_px) + model.bias
    w = model.w_profile
    logits += w["age"][np.searchsorted(AGE_EDGES, adm["age"], side="right")]
    logits += w["gender"][adm["gender"]]
    logits += w["insurance"][adm["insurance"]]
    logits += w["admission_type"][adm["admission_type"]]
    return logits.astype(np.float32)


def draw_drugs(model: Model, adm: dict, base: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Drug classes visit by visit (persistence needs the previous admission's draw).

    Returns the observed class sets (bool, visits x classes) and their exact marginals.
    """
    n = len(adm["pat"])
    taken = np.zeros((n, model.n_classes), bool)
    prob = np.zeros((n, model.n_classes), np.float32)
    for k in range(adm["k"].max() + 1):
        rows = np.flatnonzero(adm["k"] == k)
        logits = base[rows]
        if k > 0:
            logits = logits + taken[rows - 1] * model.persistence
        p = 1 / (1 + np.exp(-logits))
        prob[rows] = _ddi_marginal(model, p)
        x = rng.random(p.shape) < p
        drop = x[:, model.ddi_a] & (rng.random((len(rows), len(model.ddi_a))) < DDI_DROP)
        dropped = (drop.astype(np.float32) @ model.ddi_to_b) > 0
        taken[rows] = x & ~dropped & adm["has_rx"][rows, None]
    return taken, prob


