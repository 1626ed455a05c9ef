"""The `clinical` generator: each rule on the generator directly, and the oracle's exactness."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from leader.data import synth_clinical as clin
from leader.data.synth_clinical import ClinicalConfig, build_rules, observe
from leader.data.synth_model import (
    build_model,
    draw_codes,
    draw_patients,
    expand_admissions,
    static_logits,
    visit_counts,
)
from leader.errors import LeaderError


@pytest.fixture(scope="module")
def model():
    return build_model("mimic3", 0)


@pytest.fixture(scope="module")
def rules(model):
    return build_rules(model, 0)


def _patients(model, histories: list[list[list[str]]], age=60, gender=0, insurance=0,
              admission_type=0, has_rx=None) -> tuple[dict, dict, dict]:
    """Admissions (patient-major) with the given ICD-9 codes per visit and a fixed profile."""
    index = {c: i for i, c in enumerate(model.dx.codes)}
    counts = np.array([len(h) for h in histories])
    n = int(counts.sum())
    first = np.r_[0, np.cumsum(counts)[:-1]]
    pat = np.repeat(np.arange(len(histories)), counts)
    visit, code = [], []
    for v, codes in enumerate(c for h in histories for c in h):
        visit += [v] * len(codes)
        code += [index[c] for c in codes]
    full = np.full(n, 1)
    adm = {
        "pat": pat, "first": first, "k": np.arange(n) - first[pat],
        "age": full * age, "gender": full * gender, "insurance": full * insurance,
        "admission_type": full * admission_type,
        "has_rx": np.ones(n, bool) if has_rx is None else has_rx,
    }
    dx = {"visit": np.array(visit, int), "code": np.array(code, int)}
    px = {"visit": np.zeros(0, int), "code": np.zeros(0, int)}
    return adm, dx, px


def _static(model, rules, *histories, **profile) -> np.ndarray:
    adm, dx, px = _patients(model, list(histories), **profile)
    return observe(model, rules, adm, dx, px)


def _col(model, cls: str) -> int:
    return model.classes.index(cls)


def test_combination_needs_both_conditions(model, rules):
    """Diabetes with renal disease adds the insulin effect only when both are present."""
    obs = _static(model, rules, [["25000"]], [["5853"]], [["25000", "5853"]], [[]])
    a10a = obs.static[:, _col(model, "A10A")]
    interaction = a10a[2] - a10a[0] - a10a[1] + a10a[3]
    assert interaction == pytest.approx(3.0, abs=1e-4)
    # a chronic condition coded at an earlier admission counts as present now
    obs = _static(model, rules, [["5853"], ["25000"]], [[], ["25000"]])
    assert obs.static[1, _col(model, "A10A")] - obs.static[3, _col(model, "A10A")] == \
        pytest.approx(3.0, abs=1e-4)


def test_contraindication_suppresses_an_indicated_class(model, rules):
    """Hyperkalaemia suppresses ACE inhibitors that hypertension indicates."""
    obs = _static(model, rules, [["4019", "4280"]], [["4019", "4280", "2767"]])
    c09a = _col(model, "C09A")
    p = clin.marginals(rules, obs.static, obs.keep)[:, c09a]
    assert p[0] > 0.3 and p[1] < 0.15 * p[0]
    assert obs.keep[1, c09a] == pytest.approx(0.1)


def test_contraindication_from_an_earlier_admission(model, rules):
    """A penicillin allergy coded at the first admission suppresses penicillins later."""
    obs = _static(model, rules, [["V140"], ["486"]], [["4019"], ["486"]])
    j01c = _col(model, "J01C")
    assert obs.keep[1, j01c] == pytest.approx(0.05)
    assert obs.keep[3, j01c] == 1.0
    # an acute contraindication (hyperkalaemia) does not carry over
    obs = _static(model, rules, [["2767"], ["4019"]])
    assert obs.keep[1, _col(model, "C09A")] == 1.0


def test_continuation_of_chronic_classes_and_stop_conditions(model, rules):
    statin, antibiotic = _col(model, "C10A"), _col(model, "J01D")
    n = model.n_classes
    prev = np.zeros((3, n), bool)
    prev[:, [statin, antibiotic]] = True
    earlier = np.zeros((3, n), bool)
    stopped = np.zeros((3, n), bool)
    stopped[2] = rules.stop[list(clin.CONDITIONS).index("hypotension")]
    prev[1] = False
    earlier[1, statin] = True  # drawn two admissions ago, not at the last one
    term = clin.continuation(rules, prev, earlier, stopped)
    assert term[0, statin] == clin.CONTINUE_WEIGHT and term[0, antibiotic] == 0  # acute
    assert term[1, statin] == clin.RESTART_WEIGHT
    assert term[2, _col(model, "C09A")] == 0 and term[2, statin] == clin.CONTINUE_WEIGHT
    off = build_rules(model, 0, ClinicalConfig.parse(without=["continuation"]))
    assert not clin.continuation(off, prev, earlier, stopped).any()


def test_rare_code_acts_through_its_category(model, rules):
    """Two rare codes of one category with the same keywords get the same logits; a head code
    of a category has an effect of its own on top."""
    head = set(rules.head.nonzero()[0])
    kw = rules.cond_of_code
    codes, cats = model.dx.codes, model.dx.category
    pair = None
    for g in np.unique(cats):
        members = [i for i in np.flatnonzero(cats == g) if i not in head]
        if len(members) >= 2 and \
                (model.dx_feat[members[0]] != model.dx_feat[members[1]]).nnz == 0 and \
                (kw[members[0]] != kw[members[1]]).nnz == 0:
            pair = members[:2]
            break
    assert pair is not None
    obs = _static(model, rules, [[codes[pair[0]]]], [[codes[pair[1]]]])
    np.testing.assert_array_equal(obs.static[0], obs.static[1])
    h, sibling = next(
        (h, i) for h in sorted(head) for i in np.flatnonzero(cats == cats[h])
        if i != h and i not in head and (model.dx_feat[i] != model.dx_feat[h]).nnz == 0
        and (kw[i] != kw[h]).nnz == 0
    )
    obs = _static(model, rules, [[codes[h]]], [[codes[sibling]]])
    diff = obs.static[0] - obs.static[1]
    assert diff.max() >= clin.HEAD_EFFECT[0] - 1e-4 and (np.abs(diff) > 1e-4).sum() == 1


def test_profile_shifts_first_visit_drugs(model, rules):
    old = _static(model, rules, [["4019"]], age=75)
    young = _static(model, rules, [["4019"]], age=30)
    rule_part = (old.static - static_logits(model, *_patients(model, [[["4019"]]], age=75)[:3])
                 ) - (young.static - static_logits(
                     model, *_patients(model, [[["4019"]]], age=30)[:3]))
    assert rule_part[0, _col(model, "C10A")] == pytest.approx(0.8 + 0.8, abs=1e-4)
    off = build_rules(model, 0, ClinicalConfig.parse(without=["profile"]))
    a = _static(model, off, [["4019"]], age=75).static
    b = _static(model, off, [["4019"]], age=30).static
    np.testing.assert_allclose(a - b, static_logits(model, *_patients(model, [[["4019"]]],
                                                                       age=75)[:3])
                               - static_logits(model, *_patients(model, [[["4019"]]],
                                                                  age=30)[:3]), atol=1e-5)


def test_config_parsing_and_bad_values():
    cfg = ClinicalConfig.parse(["combinations"], ["profile=2.5"])
    assert cfg.weights["combinations"] == 0 and cfg.weights["profile"] == 2.5
    for bad in (["nope=1"], ["profile"], ["profile=x"], ["profile=-1"]):
        with pytest.raises(LeaderError):
            ClinicalConfig.parse(None, bad)
    with pytest.raises(LeaderError, match="nope"):
        ClinicalConfig.parse(["nope"])


def _draw(model, rules, patients: int, seed: int):
    rng = np.random.default_rng(seed)
    pats = draw_patients(model, patients, rng)
    adm = expand_admissions(model, pats, visit_counts(model.spec, patients, rng), rng)
    dx, px = draw_codes(model, "dx", adm, rng), draw_codes(model, "px", adm, rng)
    taken, prob = clin.draw_drugs(model, rules, adm, observe(model, rules, adm, dx, px), rng)
    return adm, taken, prob


@pytest.mark.slow
def test_oracle_matches_empirical_frequencies(model, rules):
    """On a large draw the exact marginals agree with the drawn frequencies, on first and
    returning visits, within each history stratum of the chronic classes, and for companion
    classes (whose draw depends on another class's)."""
    adm, taken, prob = _draw(model, rules, 30000, 11)
    ok = adm["has_rx"]
    k = adm["k"]
    bins = np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97])
    for name, rows in (("first", ok & (k == 0)), ("returning", ok & (k > 0))):
        p, y = prob[rows].ravel(), taken[rows].ravel()
        b = np.searchsorted(bins, p)
        for j in np.unique(b):
            m = b == j
            se = np.sqrt(p[m].mean() * (1 - p[m].mean()) / m.sum())
            assert abs(y[m].mean() - p[m].mean()) < 4 * se + 0.005, (name, j, m.sum())
    # returning visits, chronic classes: drawn at the previous admission or not
    ret = np.flatnonzero(ok & (k > 0))
    chronic = rules.chronic_cls
    for state in (True, False):
        m = taken[ret - 1][:, chronic] == state
        p, y = prob[ret][:, chronic][m], taken[ret][:, chronic][m]
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(y.mean() - p.mean()) < 4 * se + 0.002, state
    # companions: more often with their leader, and calibrated there
    for lead, comp in zip(rules.leader, rules.companion, strict=True):
        with_lead = ok & taken[:, lead]
        if with_lead.sum() > 300:
            assert taken[with_lead, comp].mean() > taken[ok & ~taken[:, lead], comp].mean()
    comp = rules.companion
    assert abs(taken[ok][:, comp].mean() - prob[ok][:, comp].mean()) < 0.01
    # interacting pairs are drawn together less often than independent draws would give
    a, b = rules.ddi_a, rules.ddi_to_b.argmax(1)
    together = (taken[ok][:, a] & taken[ok][:, b]).sum()
    assert together < 0.95 * (prob[ok][:, a] * prob[ok][:, b]).sum()


def test_oracle_uses_only_what_the_tables_show(model, rules):
    """Replicates of one patient with identical codes: the second admission's probability of a
    class may depend on the first admission's *observed* drugs only, so it is the same whether
    that admission had no prescriptions (the class was never observed) or did not draw it."""
    reps = 4000
    rng = np.random.default_rng(5)
    has_rx = np.ones(2 * reps, bool)
    has_rx[0::2] = rng.random(reps) < 0.5  # the first admission of half has no prescriptions
    adm, dx, px = _patients(model, [[["4019", "25000", "4280"], ["4019", "4280"]]] * reps,
                            has_rx=has_rx)
    obs = observe(model, rules, adm, dx, px)
    taken, prob = clin.draw_drugs(model, rules, adm, obs, rng)
    first, second = np.arange(0, 2 * reps, 2), np.arange(1, 2 * reps, 2)
    partners = set(rules.ddi_a) | set(rules.ddi_to_b.argmax(1)) | set(rules.companion)
    solo = [c for c in np.flatnonzero(rules.chronic_cls) if c not in partners]
    assert len(solo) > 5
    no_rx = ~has_rx[0::2]
    for c in solo:
        seen = taken[first, c]
        unseen = np.unique(prob[second[~seen], c])  # no prescriptions, or not drawn
        assert len(unseen) == 1, c
        if seen.any():
            assert np.unique(prob[second[seen], c]).size == 1
            assert prob[second[seen], c][0] > unseen[0]
    c = max(solo, key=lambda c: taken[first, c].sum())
    seen = taken[first, c]
    assert seen.sum() > 300 and no_rx.sum() > 1000
    for rows in (second[seen], second[~seen]):
        p = prob[rows, c][0]
        assert abs(taken[rows, c].mean() - p) < 4 * np.sqrt(p * (1 - p) / len(rows)) + 1e-3


def test_streamed_chunks_through_prepare(tmp_path, monkeypatch):
    """Several streamed chunks, both MIMIC layouts: `prepare` maps every planted row back."""
    from leader.data import synth
    from leader.data.cohort import prepare

    monkeypatch.setattr(synth, "CHUNK_PATIENTS", 90)
    for fmt in ("mimic3", "mimic4"):
        raw = tmp_path / f"raw-{fmt}"
        summary = synth.synthesize(raw, fmt, 250, seed=2)
        assert summary["generator"] == "clinical"
        prepare(fmt, raw, tmp_path / f"data-{fmt}")
        visits = pl.read_parquet(tmp_path / f"data-{fmt}" / "visits.parquet")
        _, truth = synth.read_ground_truth(raw)
        assert truth.height == summary["admissions"]
        joined = visits.join(truth, on="hadm_id", suffix="_truth")
        assert joined.height == visits.height > 100
        same = joined.select(pl.col("drugs").list.sort() == pl.col("drugs_truth").list.sort())
        # Not exactly all: a few name-only products (e.g. "Lidocaine 1") map to one class in
        # the generator's name table but to several after `prepare` normalises the name; the
        # additive generator shows the same (left to the cohort's name mapping).
        assert same.to_series().mean() > 0.98
        manifest = pl.read_json(raw / synth.SYNTH_MANIFEST)
        assert manifest["generator"][0] == "clinical"
