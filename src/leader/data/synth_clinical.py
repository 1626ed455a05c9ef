"""The `clinical` generator: prescribing rules that an additive model of the current codes misses.

Why: on the `additive` generator a logistic regression on the current codes is the best model's
own form, so the benchmark cannot reward a model that reads the history, the ICD hierarchy or
code titles. This module keeps the additive model's codes, patients and effects
(:mod:`leader.data.synth_model`) and adds six rules, each from clinical practice, seeded, with
its own weight (a multiplier, 0 switches the rule off):

- ``long_tail``: only the most frequent diagnosis codes have an effect of their own; a rarer
  code acts only through its ICD-9 category, chapter and title keywords.
- ``combinations``: effects that need two conditions at once (diabetes with renal disease ->
  insulin, heart failure with atrial fibrillation -> digoxin, ...).
- ``contraindications``: a condition multiplies a class's probability by ``1 - strength``
  (hyperkalaemia -> potassium-sparing diuretics, ACE inhibitors; active bleeding ->
  anticoagulants; a recorded penicillin allergy -> penicillins, also from earlier visits).
- ``continuation``: a chronic class drawn before returns unless a stop condition is coded now;
  acute classes do not continue.
- ``combination_therapy``: a class given brings a companion class (opioid -> laxative).
- ``profile``: age, gender, insurance and admission type shift the drugs as in real cohorts.

The oracle stays exact. Everything a draw depends on is observable in the written tables: the
current and earlier admissions' codes, the profile, and the classes drawn at earlier admissions
(their prescription rows). :func:`marginals` computes the probability from those alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import sparse

from leader.data.synth_model import (
    N_TOPICS,
    TARGET_CLASSES_FIRST_VISIT,
    Model,
    draw_codes,
    draw_patients,
    expand_admissions,
    static_logits,
)
from leader.errors import LeaderError

GENERATORS = ("additive", "clinical")
RULES = ("long_tail", "combinations", "contraindications", "continuation",
         "combination_therapy", "profile")

# Conditions: a regular expression on the lower-case long title, and whether the condition is
# chronic (it then still holds when coded at any earlier admission of the patient).
CONDITIONS: dict[str, tuple[str, bool]] = {
    "diabetes": (r"diabet", True),
    "renal_disease": (r"chronic kidney disease|end stage renal|renal insufficiency|"
                      r"chronic renal failure|hypertensive renal disease", True),
    "acute_kidney_injury": (r"acute kidney failure|acute renal failure", False),
    "hypertension": (r"essential hypertension|hypertensive|^hypertension|secondary "
                     r"hypertension", True),
    "heart_failure": (r"heart failure", True),
    "atrial_fibrillation": (r"atrial fibrillation|atrial flutter", True),
    "coronary_disease": (r"coronary|angina pectoris|myocardial infarction|ischemic heart", True),
    "copd": (r"chronic airway|chronic obstructive|chronic bronchitis|emphysema", True),
    "asthma": (r"asthma", True),
    "pneumonia": (r"pneumonia", False),
    "sepsis": (r"sepsis|septic|septicemia", False),
    "hypotension": (r"hypotension|shock", False),
    "hyperkalaemia": (r"hyperpotassemia|hyperkalemia", False),
    "active_bleeding": (r"gastrointestinal hemorrhage|hemorrhage of (gastrointestinal|rectum)|"
                        r"with hemorrhage|hematemesis|melena|hemoptysis|epistaxis|"
                        r"intracerebral hemorrhage|subarachnoid hemorrhage|"
                        r"subdural hemorrhage", False),
    "intracranial_bleed": (r"intracerebral hemorrhage|subarachnoid hemorrhage|"
                           r"subdural hemorrhage", True),
    "peptic_ulcer": (r"gastric ulcer|duodenal ulcer|peptic ulcer|gastrojejunal ulcer", True),
    "cirrhosis": (r"cirrhosis", True),
    "malignancy": (r"malignant neoplasm", True),
    "pain": (r"pain", False),
    "bradycardia": (r"bradycardia|atrioventricular block", False),
    "hypoglycaemia": (r"hypoglycemi", False),
    "penicillin_allergy": (r"allergy to penicillin", True),
    "sulfonamide_allergy": (r"allergy to sulfonamides", True),
    "narcotic_allergy": (r"allergy to narcotic", True),
}

# Both conditions (current, or chronic and coded earlier) -> logit effects.
COMBINATIONS: list[tuple[tuple[str, str], dict[str, float]]] = [
    (("diabetes", "renal_disease"), {"A10A": 3.0}),  # insulin rather than metformin
    (("heart_failure", "atrial_fibrillation"), {"C01A": 3.0}),  # digoxin
    (("diabetes", "hypertension"), {"C09A": 2.0}),  # ACE inhibitor for renal protection
    (("coronary_disease", "diabetes"), {"C10A": 2.0}),  # statin
    (("pneumonia", "copd"), {"H02A": 3.0}),  # systemic corticosteroid in an exacerbation
    (("sepsis", "hypotension"), {"C01C": 3.5}),  # vasopressors in septic shock
    (("malignancy", "pain"), {"N02A": 3.0}),  # opioids for cancer pain
    (("cirrhosis", "active_bleeding"), {"J01M": 3.0, "H01B": 3.0}),  # variceal bleeding
]

# (condition, classes, strength, counts from earlier admissions too)
CONTRAINDICATIONS: list[tuple[str, list[str], float, bool]] = [
    ("hyperkalaemia", ["C03D", "C09A", "C09C", "A12B"], 0.9, False),
    ("active_bleeding", ["B01A", "M01A"], 0.9, False),
    ("intracranial_bleed", ["B01A"], 0.8, True),
    ("peptic_ulcer", ["M01A"], 0.9, True),
    ("renal_disease", ["A10B", "M01A"], 0.8, True),
    ("asthma", ["C07A"], 0.7, True),
    ("bradycardia", ["C07A", "C08D"], 0.8, False),
    ("penicillin_allergy", ["J01C"], 0.95, True),
    ("sulfonamide_allergy", ["J01E"], 0.95, True),
    ("narcotic_allergy", ["N02A"], 0.9, True),
]

# A stop condition coded at the current admission cancels the continuation of these classes.
STOPS: list[tuple[str, list[str]]] = [
    ("hypotension", ["C09A", "C09C", "C07A", "C08C", "C03A", "C02A"]),
    ("acute_kidney_injury", ["C09A", "C09C", "A10B", "M01A", "C03A"]),
    ("active_bleeding", ["B01A"]),
    ("hypoglycaemia", ["A10B"]),
    ("bradycardia", ["C07A", "C08D", "C01A"]),
    ("sepsis", ["A10B", "C09A"]),
]

# Chronic classes (ATC3 prefixes): long-term therapy that continues across admissions.
CHRONIC = ("C01A", "C01B", "C01D", "C02", "C03", "C07", "C08", "C09", "C10", "A10", "A02B",
           "B01A", "H03A", "N03A", "N04", "N05A", "N06A", "N06D", "R03", "J05A", "M04A",
           "M05B", "G04C", "L04A", "G03")
CONTINUE_WEIGHT = 4.0  # the class was drawn at the previous admission
RESTART_WEIGHT = 2.0  # drawn at an earlier admission, not at the previous one

# (leader, companion, chance the companion comes with a given leader)
THERAPY: list[tuple[str, str, float]] = [
    ("N02A", "A06A", 0.5),  # opioid -> laxative
    ("C03C", "A12B", 0.5),  # loop diuretic -> potassium
    ("H02A", "A02B", 0.4),  # corticosteroid -> proton-pump inhibitor
    ("L01X", "A04A", 0.5),  # chemotherapy -> antiemetic
    ("J04A", "A11H", 0.6),  # isoniazid -> pyridoxine
]

# (profile test, logit effects). Tests: age_min / age_max (years at admission), gender M/F,
# insurance and admission_type (regular expressions on the value as written to the tables).
PROFILE: list[tuple[dict[str, object], dict[str, float]]] = [
    ({"age_min": 65}, {"C10A": 0.8, "C09A": 0.5, "C07A": 0.5, "B01A": 0.5, "A02B": 0.4,
                       "N06D": 1.0}),
    ({"age_min": 65, "gender": "M"}, {"G04C": 1.5}),
    ({"age_min": 50, "gender": "F"}, {"M05B": 1.2}),
    ({"gender": "F"}, {"H03A": 0.8, "N06A": 0.4}),
    ({"age_max": 39}, {"N07B": 0.8, "N05A": 0.4, "C10A": -0.8}),
    ({"admission_type": r"ELECTIVE|SURGICAL"}, {"J01D": 1.0, "N01A": 1.2, "N01B": 0.8,
                                                 "A04A": 0.6, "B01A": 0.5}),
    ({"admission_type": r"EMER"}, {"B05X": 0.3, "N02A": 0.3}),
    ({"insurance": r"Medicaid"}, {"N05A": 0.6, "N07B": 0.8}),
]

# Interacting pairs: the rarer class of a pair drawn together is dropped with this chance. Lower
# than the additive model's 0.7, under which the bundled pairs all but remove ACE inhibitors and
# statins next to the common anticoagulants and opioids; real cohorts co-prescribe interacting
# classes often (ground-truth DDI rate ~0.08 in MIMIC-III, SafeDrug paper, Yang et al. 2021).
DDI_DROP = 0.3

N_HEAD = 300  # diagnosis codes with an effect of their own (the most frequent)
HEAD_EFFECT = (1.5, 3.0)  # uniform range of a head code's effect on its one target class


@dataclass(frozen=True)
class ClinicalConfig:
    """Which rules are on and how strongly (a multiplier on the rule's effects)."""

    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RULES, 1.0))

    @classmethod
    def parse(cls, without: list[str] | None = None,
              weights: list[str] | None = None) -> ClinicalConfig:
        """From rule names to switch off and ``RULE=WEIGHT`` strings."""
        w = dict.fromkeys(RULES, 1.0)
        for item in weights or []:
            name, sep, value = item.partition("=")
            if not sep or name not in RULES:
                raise LeaderError(f"rule weight: expected RULE=WEIGHT with RULE one of "
                                  f"{', '.join(RULES)}, got {item!r}")
            try:
                w[name] = float(value)
            except ValueError:
                raise LeaderError(f"rule weight {name}: expected a number, got {value!r}") from None
            if not w[name] >= 0:
                raise LeaderError(f"rule weight {name}: expected >= 0, got {value!r}")
        for name in without or []:
            if name not in RULES:
                raise LeaderError(f"rule: expected one of {', '.join(RULES)}, got {name!r}")
            w[name] = 0.0
        return cls(weights=w)


@dataclass
class Rules:
    """The clinical rules resolved against one model's codes and classes."""

    config: ClinicalConfig
    cond_of_code: sparse.csr_matrix  # dx codes x conditions (0/1)
    chronic_cond: np.ndarray  # conditions, bool
    head: sparse.csr_matrix  # dx codes x classes: the head codes' own effects
    comb_a: np.ndarray  # per combination effect: condition a, condition b, class, weight
    comb_b: np.ndarray
    comb_cls: np.ndarray
    comb_w: np.ndarray
    contra_cond: np.ndarray  # per contraindicated (condition, class): condition, class, ...
    contra_cls: np.ndarray
    contra_s: np.ndarray  # strength after the rule weight, <= 1
    contra_hist: np.ndarray  # bool: counts when coded at an earlier admission
    stop: np.ndarray  # conditions x classes, bool
    chronic_cls: np.ndarray  # classes, bool
    leader: np.ndarray  # combination therapy: leader class, companion class, chance
    companion: np.ndarray
    chance: np.ndarray
    ddi_a: np.ndarray  # interacting pairs without companion classes (see marginals)
    ddi_to_b: np.ndarray
    profile_tests: list[dict[str, object]]
    profile_w: np.ndarray  # profile rules x classes
    shift: float = 0.0  # base-rate shift that keeps TARGET_CLASSES_FIRST_VISIT

    @property
    def weights(self) -> dict[str, float]:
        return self.config.weights

    def describe(self) -> dict:
        """The rules and their weights, for the manifest."""
        return {
            "weights": self.weights,
            "conditions": {k: {"title_regex": p, "chronic": c} for k, (p, c) in
                           CONDITIONS.items()},
            "long_tail": {"head_codes": N_HEAD, "head_effect": list(HEAD_EFFECT)},
            "combinations": [{"conditions": list(c), "effects": e} for c, e in COMBINATIONS],
            "contraindications": [{"condition": c, "classes": k, "strength": s,
                                   "earlier_admissions": h}
                                  for c, k, s, h in CONTRAINDICATIONS],
            "continuation": {"chronic_prefixes": list(CHRONIC), "continue": CONTINUE_WEIGHT,
                             "restart": RESTART_WEIGHT,
                             "stops": [{"condition": c, "classes": k} for c, k in STOPS]},
            "combination_therapy": [{"leader": a, "companion": b, "chance": q}
                                    for a, b, q in THERAPY],
            "profile": [{"test": t, "effects": e} for t, e in PROFILE],
            "ddi_pairs": len(self.ddi_a),
            "base_rate_shift": round(self.shift, 6),
        }


def _code_popularity(model: Model) -> np.ndarray:
    """The background code distribution (the last segment of the flat code CDF)."""
    n = len(model.dx.codes)
    cum = model.dx_cum[-n:] - N_TOPICS
    pop = np.diff(np.r_[0.0, cum])
    order = model.dx_flat[-n:]
    out = np.zeros(n)
    out[order] = pop
    return out


def build_rules(model: Model, seed: int, config: ClinicalConfig | None = None) -> Rules:
    """Resolve the rule tables against ``model`` and draw the head-code effects (seeded)."""
    config = config or ClinicalConfig()
    w = config.weights
    rng = np.random.default_rng([seed, 4])
    idx = {c: i for i, c in enumerate(model.classes)}
    n_cls, n_codes = model.n_classes, len(model.dx.codes)
    names = list(CONDITIONS)
    lower = pl.Series(model.dx.long).str.to_lowercase()
    rows, cols = [], []
    for j, (pattern, _) in enumerate(CONDITIONS.values()):
        hit = np.flatnonzero(lower.str.contains(pattern).to_numpy())
        rows.append(hit)
        cols.append(np.full(len(hit), j))
    r, c = np.concatenate(rows), np.concatenate(cols)
    cond_of_code = sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)),
                                     (n_codes, len(names)))
    chronic_cond = np.array([chronic for _, chronic in CONDITIONS.values()])

    # Long tail: the N_HEAD most frequent codes get one target class each.
    head_codes = np.argsort(-_code_popularity(model), kind="stable")[:N_HEAD]
    p_target = np.sqrt(np.exp(model.bias))
    targets = rng.choice(n_cls, len(head_codes), p=p_target / p_target.sum())
    effect = rng.uniform(*HEAD_EFFECT, len(head_codes)) * w["long_tail"]
    head = sparse.csr_matrix((effect.astype(np.float32), (head_codes, targets)),
                             (n_codes, n_cls))

    comb = [(names.index(a), names.index(b), idx[k], v * w["combinations"])
            for (a, b), eff in COMBINATIONS for k, v in eff.items() if k in idx]
    contra = [(names.index(cond), idx[k], min(1.0, s * w["contraindications"]), hist)
              for cond, ks, s, hist in CONTRAINDICATIONS for k in ks if k in idx]
    stop = np.zeros((len(names), n_cls), bool)
    for cond, ks in STOPS:
        stop[names.index(cond), [idx[k] for k in ks if k in idx]] = True
    chronic_cls = np.array([cls.startswith(CHRONIC) for cls in model.classes])
    therapy = [(idx[a], idx[b], min(1.0, q * w["combination_therapy"]))
               for a, b, q in THERAPY if a in idx and b in idx]
    leaders = {a for a, _, _ in therapy}
    companions = {b for _, b, _ in therapy}
    if leaders & companions or len(companions) < len(therapy):
        raise LeaderError("combination therapy: a companion must have one leader and lead none")
    # A companion's presence depends on its leader's, so companions take no part in the DDI
    # thinning: the thinned draws then stay independent and the marginals exact.
    pair_b = model.ddi_to_b.argmax(1)
    keep = ~np.isin(model.ddi_a, list(companions)) & ~np.isin(pair_b, list(companions))
    profile_w = np.zeros((len(PROFILE), n_cls), np.float32)
    for i, (_, eff) in enumerate(PROFILE):
        for k, v in eff.items():
            if k in idx:
                profile_w[i, idx[k]] = v * w["profile"]

    def arr(items: list[tuple], i: int, dtype) -> np.ndarray:
        return np.array([t[i] for t in items], dtype)

    rules = Rules(
        config=config, cond_of_code=cond_of_code, chronic_cond=chronic_cond, head=head,
        comb_a=arr(comb, 0, int), comb_b=arr(comb, 1, int), comb_cls=arr(comb, 2, int),
        comb_w=arr(comb, 3, np.float32),
        contra_cond=arr(contra, 0, int), contra_cls=arr(contra, 1, int),
        contra_s=arr(contra, 2, np.float64), contra_hist=arr(contra, 3, bool),
        stop=stop, chronic_cls=chronic_cls,
        leader=arr(therapy, 0, int), companion=arr(therapy, 1, int),
        chance=arr(therapy, 2, np.float64),
        ddi_a=model.ddi_a[keep], ddi_to_b=model.ddi_to_b[keep],
        profile_tests=[t for t, _ in PROFILE], profile_w=profile_w,
    )
    _calibrate(model, rules, np.random.default_rng([seed, 5]))
    return rules


# ---------------------------------------------------------------------- per-visit observables


@dataclass
class Observed:
    """What the rules read from the tables, per admission (patient-major, oldest first)."""

    now: np.ndarray  # admissions x conditions: coded at this admission
    before: np.ndarray  # admissions x conditions: coded at an earlier admission
    static: np.ndarray  # admissions x classes: every logit term that needs no earlier drugs
    keep: np.ndarray  # admissions x classes: product of (1 - contraindication strength)
    stopped: np.ndarray  # admissions x classes: a stop condition is coded now


def _earlier(flags: np.ndarray, adm: dict) -> np.ndarray:
    """Per admission: whether each flag was set at any earlier admission of the patient."""
    cs = np.cumsum(flags, axis=0, dtype=np.int32) - flags
    start = adm["first"][adm["pat"]]
    return (cs - cs[start]) > 0


def _profile_hits(model: Model, tests: list[dict[str, object]], adm: dict) -> np.ndarray:
    prof = model.spec.profile
    ins = np.array(list(prof["insurance"]))[adm["insurance"]]
    typ = np.array(list(prof["admission_type"]))[adm["admission_type"]]
    hits = np.ones((len(adm["pat"]), len(tests)), bool)
    for j, t in enumerate(tests):
        if "age_min" in t:
            hits[:, j] &= adm["age"] >= t["age_min"]
        if "age_max" in t:
            hits[:, j] &= adm["age"] <= t["age_max"]
        if "gender" in t:
            hits[:, j] &= adm["gender"] == (t["gender"] == "M")
        for key, values in (("insurance", ins), ("admission_type", typ)):
            if key in t:
                hits[:, j] &= np.array([bool(re.search(str(t[key]), v)) for v in values])
    return hits


def observe(model: Model, rules: Rules, adm: dict, dx: dict, px: dict) -> Observed:
    """The rule inputs of every admission, from its codes, profile and earlier codes."""
    n = len(adm["pat"])
    codes = sparse.csr_matrix((np.ones(len(dx["visit"]), np.float32), (dx["visit"], dx["code"])),
                              (n, len(model.dx.codes)))
    now = np.asarray((codes @ rules.cond_of_code).todense()) > 0
    before = _earlier(now, adm)
    held = now | (before & rules.chronic_cond)
    static = static_logits(model, adm, dx, px) + rules.shift
    static += np.asarray((codes @ rules.head).todense(), np.float32)
    both = held[:, rules.comb_a] & held[:, rules.comb_b]
    comb = np.zeros((len(rules.comb_w), model.n_classes), np.float32)
    comb[np.arange(len(rules.comb_w)), rules.comb_cls] = rules.comb_w
    static += both.astype(np.float32) @ comb
    static += _profile_hits(model, rules.profile_tests, adm).astype(np.float32) @ rules.profile_w
    active = now[:, rules.contra_cond] | (before[:, rules.contra_cond] & rules.contra_hist)
    log_keep = np.zeros((len(rules.contra_s), model.n_classes))
    log_keep[np.arange(len(rules.contra_s)), rules.contra_cls] = np.log(
        np.maximum(1 - rules.contra_s, 1e-12))  # strength 1: never drawn (exp -> 0)
    keep = np.exp(active.astype(np.float64) @ log_keep)
    stopped = (now.astype(np.float32) @ rules.stop.astype(np.float32)) > 0
    return Observed(now=now, before=before, static=static.astype(np.float32),
                    keep=keep, stopped=stopped)


def continuation(rules: Rules, previous: np.ndarray, earlier: np.ndarray,
                 stopped: np.ndarray) -> np.ndarray:
    """Logit terms of chronic classes drawn at the previous / an earlier admission."""
    w = rules.weights["continuation"]
    on = rules.chronic_cls & ~stopped
    return (on * (CONTINUE_WEIGHT * previous + RESTART_WEIGHT * (earlier & ~previous)) * w
            ).astype(np.float32)


def _primary(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """P(x_c = 1) of the independent first draw: sigmoid(logit) times the contraindications."""
    return keep / (1 + np.exp(-logits.astype(np.float64)))


def marginals(rules: Rules, logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Exact P(class drawn) from the full logits and the contraindication factors.

    Draw order: x_c ~ Bernoulli(sigmoid(logit_c) * keep_c) independently; interacting pairs
    thinned (companions excluded), so a kept class has p_b * prod_a (1 - DDI_DROP p_a); then a
    companion is added with its chance when its leader was kept, which is independent of the
    companion's own draw.
    """
    p = _primary(logits, keep)
    kept = p * np.exp(np.log1p(-DDI_DROP * p[:, rules.ddi_a]) @ rules.ddi_to_b)
    kept[:, rules.companion] = 1 - (1 - p[:, rules.companion]) * (
        1 - rules.chance * kept[:, rules.leader])
    return kept.astype(np.float32)


def draw_drugs(model: Model, rules: Rules, adm: dict, obs: Observed,
               rng) -> tuple[np.ndarray, np.ndarray]:
    """Drug classes admission by admission; returns the drawn sets and their exact marginals."""
    n = len(adm["pat"])
    taken = np.zeros((n, model.n_classes), bool)
    earlier = np.zeros((n, model.n_classes), bool)  # drawn at any admission before the last
    prob = np.zeros((n, model.n_classes), np.float32)
    for k in range(adm["k"].max() + 1 if n else 0):
        rows = np.flatnonzero(adm["k"] == k)
        logits = obs.static[rows]
        if k > 0:
            if k > 1:
                earlier[rows] = earlier[rows - 1] | taken[rows - 2]
            logits = logits + continuation(rules, taken[rows - 1], earlier[rows],
                                           obs.stopped[rows])
        prob[rows] = marginals(rules, logits, obs.keep[rows])
        p = _primary(logits, obs.keep[rows])
        x = rng.random(p.shape) < p
        drop = x[:, rules.ddi_a] & (rng.random((len(rows), len(rules.ddi_a))) < DDI_DROP)
        x &= ~((drop.astype(np.float32) @ rules.ddi_to_b) > 0)
        comes = x[:, rules.leader] & (rng.random((len(rows), len(rules.leader))) < rules.chance)
        x[:, rules.companion] |= comes
        taken[rows] = x & adm["has_rx"][rows, None]
    return taken, prob


def _calibrate(model: Model, rules: Rules, rng: np.random.Generator) -> None:
    """Shift the base rates so a first visit has TARGET_CLASSES_FIRST_VISIT classes on average."""
    pats = draw_patients(model, 2000, rng)
    adm = expand_admissions(model, pats, np.ones(2000, int), rng)
    dx = draw_codes(model, "dx", adm, rng)
    px = draw_codes(model, "px", adm, rng)
    rules.shift = 0.0
    obs = observe(model, rules, adm, dx, px)
    lo, hi = -10.0, 10.0
    for _ in range(24):
        mid = (lo + hi) / 2
        mean = marginals(rules, obs.static + mid, obs.keep).sum(1).mean()
        lo, hi = (mid, hi) if mean < TARGET_CLASSES_FIRST_VISIT else (lo, mid)
    rules.shift = (lo + hi) / 2

