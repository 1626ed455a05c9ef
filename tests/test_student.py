"""The LEADER student: shapes, masking, first visits, truncation, resume, bundle round trip."""

import json
import shutil

import numpy as np
import pytest
import torch

import leader
import leader.bundle as bundle
from leader.data.samples import Sample, Visit
from leader.errors import LeaderError
from leader.models.student import Student, StudentConfig
from leader.train import FitContext, TrainConfig

# tiny models on a shared 2-core machine: more threads only contend (20x slower measured)


def make_student(data, **config):
    torch.manual_seed(0)
    student = Student(data.schema, config)
    student.build()
    return student


def codes(data, kind, n, start=0):
    return tuple(data.vocab[kind].codes[start : start + n])


def visit(data, k=0, procedures=True):
    return Visit(
        codes(data, "diagnoses", 3, k),
        codes(data, "procedures", 2, k) if procedures else (),
        codes(data, "drugs", 2, k),
    )


PROFILE_A = {"gender": "F", "age": 70, "insurance": "Medicare", "marital_status": "MARRIED"}
PROFILE_B = {"gender": "M", "age": 30, "insurance": "Private", "marital_status": "SINGLE"}


def test_shapes_and_no_nans(tiny_data):
    student = make_student(tiny_data)
    samples = tiny_data.samples("train")
    logits, feature, profile = student.module(student.encoder.collate(samples))
    assert logits.shape == (len(samples), len(tiny_data.drugs))
    assert feature.shape == (len(samples), 128) and profile.shape == (len(samples), 64)
    probs = student.predict_proba(samples)
    assert probs.shape == (len(samples), len(tiny_data.drugs))
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()


def test_empty_sets_and_padding_give_finite_outputs(tiny_data):
    student = make_student(tiny_data)
    empty = Visit(codes(tiny_data, "diagnoses", 2), (), ())  # no procedures, no drugs
    unknown_only = Visit(("icd9:nope",), ("icd9:nope",), ())  # every code unknown: empty sets
    samples = [
        Sample("a/0", "a", (empty,), PROFILE_A),
        Sample("b/1", "b", (visit(tiny_data), empty), PROFILE_B),
        Sample("c/0", "c", (unknown_only,), {}),
    ]
    probs = student.predict_proba(samples)
    assert np.isfinite(probs).all()
    student.module.train()  # the training path (dropout, no fast path) too
    logits, feature, _ = student.module(student.encoder.collate(samples))
    assert torch.isfinite(logits).all() and torch.isfinite(feature).all()
    logits.sum().backward()
    for name, p in student.module.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_first_visit_prediction_depends_on_profile(tiny_data):
    student = make_student(tiny_data)
    same = (visit(tiny_data),)
    a = Sample("a/0", "a", same, PROFILE_A)
    b = Sample("b/0", "b", same, PROFILE_B)
    probs = student.predict_proba([a, b])
    assert np.abs(probs[0] - probs[1]).max() > 1e-4
    # without the profile, the first visit's drug record is one learned vector for everybody
    blind = make_student(tiny_data, use_profile=False)
    probs = blind.predict_proba([a, b])
    np.testing.assert_allclose(probs[0], probs[1], rtol=0, atol=1e-6)
    assert not any(n.startswith("profile.") for n, _ in blind.module.named_parameters())


def test_long_histories_keep_the_last_k_visits(tiny_data):
    k = 3
    student = make_student(tiny_data, max_visits=k)
    recent = tuple(visit(tiny_data, i) for i in range(k + 1))  # k kept + the one before them
    older = tuple(visit(tiny_data, 5 + i) for i in range(4))
    short = Sample("p/3", "p", recent, PROFILE_A)
    long = Sample("p/7", "p", older + recent, PROFILE_A)
    p_short, p_long = student.predict_proba([short]), student.predict_proba([long])
    np.testing.assert_allclose(p_short, p_long, rtol=0, atol=1e-6)
    # a change inside the last k visits does change the output (the check above can fail)
    changed = Sample("p/3", "p", recent[:1] + (visit(tiny_data, 9),) + recent[2:], PROFILE_A)
    assert np.abs(student.predict_proba([changed]) - p_short).max() > 1e-4
    # the current visit is always last: a 1-visit patient and a long one share the position
    batch = student.encoder.collate([short, Sample("q/0", "q", recent[-1:], PROFILE_A)])
    assert batch.visit_mask[:, -1].all()


def test_batched_equals_single(tiny_data):
    student = make_student(tiny_data)
    samples = tiny_data.samples("test")
    batched = student.predict_proba(samples)
    single = np.concatenate([student.predict_proba([s]) for s in samples])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)


def test_predictions_run_where_training_left_the_module(tiny_data, monkeypatch):
    """After a fit on a GPU the module stays there while batches are collated on the CPU: every
    batch must go to the module's device (this CPU here) and the probabilities come back."""
    from leader.data.samples import CodeBatch

    student = make_student(tiny_data)
    moved, to = [], CodeBatch.to

    def spy(batch, device):
        moved.append(device)
        return to(batch, device)

    monkeypatch.setattr(CodeBatch, "to", spy)
    samples = tiny_data.samples("test")
    probs = student.predict_proba(samples, batch_size=4)
    assert moved == [torch.device("cpu")] * -(-len(samples) // 4)
    assert probs.shape == (len(samples), len(tiny_data.drugs))


def quick(**train) -> StudentConfig:
    return StudentConfig(alpha=0.0, beta=0.01,
                         train=TrainConfig(**{"epochs": 3, "batch_size": 8, "patience": 100,
                                              **train}))


def fit(student, data, run_dir=None, on_step=None):
    student.fit(data, FitContext(run_dir, progress=False, on_step=on_step))
    return student.fit_summary


@pytest.fixture(scope="module")
def trained(tiny_data):
    student = Student(tiny_data.schema, quick(epochs=4))
    fit(student, tiny_data)
    return student


def test_bundle_roundtrip_identical_predictions(trained, tiny_data, tmp_path):
    out = bundle.save_bundle(trained, tmp_path / "student", metrics={"test": {"jaccard": 0.5}})
    loaded = leader.load(out)
    samples = tiny_data.samples("test")
    np.testing.assert_array_equal(loaded.predict_proba(samples), trained.predict_proba(samples))
    assert loaded.manifest["model"] == "student"
    assert loaded.manifest["config"]["beta"] == 0.01
    assert loaded.model.config == trained.config
    first = loaded.recommend(
        {"profile": PROFILE_A, "visits": [{"diagnoses": list(codes(tiny_data, "diagnoses", 2))}]}
    )
    assert len(first["ranked"]) == len(tiny_data.drugs)


def test_damaged_bundle_is_refused(trained, tmp_path):
    out = bundle.save_bundle(trained, tmp_path / "student")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    with open(damaged / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    with pytest.raises(LeaderError, match="checksum"):
        bundle.load(damaged)
    # a config that no longer fits the weights (manifest re-hashed): refused, not mis-served
    shutil.copytree(out, tmp_path / "refit")
    cfg = json.loads((tmp_path / "refit" / "model.json").read_text())
    cfg["config"]["dim"] = 32
    (tmp_path / "refit" / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(LeaderError, match="student"):
        bundle.load(tmp_path / "refit", verify=False)


def test_resume_after_interruption_gives_same_weights(tiny_data, tmp_path):
    options = quick(max_steps=14, epochs=10, eval_every=4)
    ref = Student(tiny_data.schema, options)
    fit(ref, tiny_data, run_dir=tmp_path / "ref")

    def crash(step):
        if step == 9:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(Student(tiny_data.schema, options), tiny_data, run_dir=run, on_step=crash)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 8
    torch.manual_seed(999)  # nothing of the interrupted process survives but the checkpoint
    resumed = Student(tiny_data.schema, options)
    result = fit(resumed, tiny_data, run_dir=run)
    assert result["steps"] == 14
    for (name, a), b in zip(
        ref.module.state_dict().items(), resumed.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# --- presets and ablation flags ----------------------------------------------------------------

FLAGS = [
    {"preset": "reference"},
    {"hierarchy": False},
    {"group_presence": False},
    {},  # the default preset
    {"wide": False},
    {"frequency_bias": False},
    {"set_encoder": "mean"},
    {"shared_visit_encoder": False, "visit_positions": True},
    {"norm_first": False, "activation": "relu"},
    {"feature_before_activation": False},
]


@pytest.mark.parametrize("config", FLAGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "default")
def test_each_preset_and_flag_shapes_and_masking(tiny_data, config):
    """Every configuration: right shapes, and padding (visits, codes) never changes a result."""
    student = make_student(tiny_data, **config)
    student.module.eval()
    samples = tiny_data.samples("train")[:12]
    batch = student.encoder.collate(samples)
    with torch.no_grad():
        logits, feature, profile = student.module(batch)
        assert logits.shape == (12, len(tiny_data.drugs)) and torch.isfinite(logits).all()
        assert feature.shape == (12, 128) and profile.shape == (12, 64)
        # each sample alone (less padding) gives the same logits as inside the batch
        alone = torch.cat([student.module(student.encoder.collate([s]))[0] for s in samples])
    torch.testing.assert_close(alone, logits, rtol=1e-4, atol=1e-4)


def test_presets_differ_only_where_documented(tiny_data):
    from leader.models.student import PRESETS

    ref = StudentConfig.from_dict({"preset": "reference"}).to_dict()
    default = StudentConfig().to_dict()
    assert default == StudentConfig.from_dict({}).to_dict() and default["preset"] == "leader"
    changed = {k for k in ref if ref[k] != default[k]} - {"preset"}
    assert changed == set(PRESETS["reference"]) == {"wide", "frequency_bias", "set_encoder",
                                                    "hierarchy"}
    # the reference student itself: pre-norm GELU, ff 300, dropout 0.4 / 0.1, one shared visit
    # encoder without positions, feature before activation, InfoNCE tau 1, 64-d projections, sum
    assert (ref["norm_first"], ref["activation"], ref["ff"]) == (True, "gelu", 300)
    assert (ref["dropout"], ref["attention_dropout"]) == (0.4, 0.1)
    assert ref["shared_visit_encoder"] and not ref["visit_positions"]
    assert ref["feature_before_activation"] and ref["set_encoder"] == "transformer"
    assert (ref["align_temperature"], ref["align_projection"], ref["align_sum"]) == (1.0, 64, True)
    student = make_student(tiny_data, preset="reference")
    assert student.module.wide is None and list(student.module.visits) == ["shared"]
    block = student.module.sets["diagnoses"].encoder.layers[0]
    assert block.norm_first and block.linear1.out_features == 300
    assert block.dropout.p == 0.4 and block.self_attn.dropout == 0.1
    # an explicit key wins over the preset; an unknown preset is refused
    assert StudentConfig.from_dict({"preset": "reference", "wide": True}).wide is True
    with pytest.raises(LeaderError, match="preset: expected one of leader, reference, got 'nope'"):
        Student(tiny_data.schema, {"preset": "nope"})


def test_feature_is_taken_before_the_activation(tiny_data):
    student = make_student(tiny_data)
    student.module.eval()
    with torch.no_grad():
        _, pre, _ = student.module(student.encoder.collate(tiny_data.samples("train")[:8]))
    assert (pre < 0).any()  # a ReLU output would have none
    post = make_student(tiny_data, feature_before_activation=False)
    post.module.eval()
    with torch.no_grad():
        _, after, _ = post.module(post.encoder.collate(tiny_data.samples("train")[:8]))
    assert (after >= 0).all()


def one_step(student, data):
    """One optimiser step that changes nothing (lr 1e-9): what fit sets up before training."""
    cfg = student.config
    student.config = cfg.replace(alpha=0.0, beta=0.0,
                                 train=cfg.train.replace(max_steps=1, lr=1e-9))
    student.fit(data, FitContext(progress=False))


def test_wide_path_and_frequency_bias(tiny_data):
    from leader.data.samples import multi_hot

    student = make_student(tiny_data)
    one_step(student, tiny_data)
    freq = multi_hot([s.target for s in tiny_data.samples("train")], tiny_data.drugs).mean(0)
    freq = freq.clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(student.module.head.bias, torch.log(freq / (1 - freq)),
                               rtol=1e-3, atol=1e-3)
    wide = student.module.wide
    assert wide is not None and set(wide.codes) == {"diagnoses", "procedures", "drugs"}
    # the wide path reads only the current visit's codes and the previous drugs
    s = tiny_data.samples("train")[0]
    batch = student.encoder.collate([s])
    with torch.no_grad():
        direct = wide(batch)
        dx = batch.diagnoses[0, -1]
        by_hand = wide.codes["diagnoses"].weight[dx[dx > 0]].sum(0)
        by_hand = by_hand + wide.codes["procedures"].weight[batch.procedures[0, -1]].sum(0)
        by_hand = by_hand + wide.codes["drugs"].weight[batch.prev_drugs[0, -1]].sum(0)
        for i, emb in enumerate(wide.fields):
            by_hand = by_hand + emb.weight[batch.profile[0, i]]
        current = {"diagnoses": dx, "procedures": batch.procedures[0, -1],
                   "drugs": batch.prev_drugs[0, -1]}
        for kind, group in wide.groups.items():  # each code's category adds its own vector
            by_hand = by_hand + group.embed.weight[group.of_code[current[kind]]].sum(0)
    assert set(wide.groups) == {"diagnoses", "procedures", "drugs"}
    torch.testing.assert_close(direct[0], by_hand * wide.scale)
    none = make_student(tiny_data, wide=False, frequency_bias=False)
    one_step(none, tiny_data)
    assert none.module.wide is None
    assert not torch.allclose(none.module.head.bias, student.module.head.bias)


def test_a_bundle_from_before_the_presets_is_refused_clearly(tiny_data, tmp_path):
    student = make_student(tiny_data)
    out = bundle.save_bundle(student, tmp_path / "s")
    cfg = json.loads((out / "model.json").read_text())
    del cfg["config"]["preset"]
    (out / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(LeaderError, match="older leader"):
        bundle.load(out, verify=False)


# --- the code hierarchy -------------------------------------------------------------------------


def test_code_groups_by_system():
    from leader.data.hierarchy import code_group, group_ids

    cases = {("diagnoses", "icd9:25013"): "icd9:d:250", ("diagnoses", "icd9:E8800"): "icd9:d:E880",
             ("diagnoses", "icd9:V4581"): "icd9:d:V45", ("procedures", "icd9:3722"): "icd9:p:37",
             ("diagnoses", "icd10:E119"): "icd10:d:E11",
             ("procedures", "icd10:0FB04ZX"): "icd10:p:0FB", ("drugs", "C09A"): "atc:C09",
             ("diagnoses", "omop:4329847"): None, ("diagnoses", "icd9:25"): None}
    for (kind, code), group in cases.items():
        assert code_group(kind, code) == group, code
    # ids from 1 in order of first use; a group of one code is none; entry 0 is padding
    table = group_ids("diagnoses", ["icd9:25013", "icd9:4019", "icd9:25002", "icd10:E119"])
    assert table == [0, 1, 0, 1, 0]


def test_hierarchy_shares_a_category_between_its_codes(tiny_data):
    """Procedures icd9:3600..3611 share category 36: each one's set vector is its own embedding
    plus the ONE category embedding; without --hierarchy there is no category table."""
    student = make_student(tiny_data)
    sets = student.module.sets["procedures"]
    codes = tiny_data.schema.vocab["procedures"].codes
    ids = torch.tensor([[codes.index("icd9:3600") + 1], [codes.index("icd9:3611") + 1]])
    with torch.no_grad():
        shared = sets(ids) - sets.embed(ids).squeeze(1)
    assert sets.group is not None and sets.group.embed.num_embeddings == 2  # padding + "36"
    torch.testing.assert_close(shared[0], sets.group.embed.weight[1])
    torch.testing.assert_close(shared[1], sets.group.embed.weight[1])
    plain = make_student(tiny_data, hierarchy=False)
    assert plain.module.sets["procedures"].group is None and not plain.module.wide.groups


def test_the_wide_path_counts_a_group_once_per_visit(tiny_data):
    """Two procedures of category 36 in one visit: the wide path adds the category's logit
    vector once (group_presence, the default), or once per code (--no-group-presence)."""
    codes = tiny_data.schema.vocab["procedures"].codes
    a, b = codes.index("icd9:3600") + 1, codes.index("icd9:3611") + 1
    ids = torch.tensor([[a, b, 0], [b, 0, 0], [0, a, b]])
    for presence, times in ((True, 1), (False, 2)):
        student = make_student(tiny_data, group_presence=presence)
        groups = student.module.wide.groups["procedures"]
        assert student.module.wide.presence is presence
        with torch.no_grad():
            groups.embed.weight.normal_()
            bag = groups.bag(ids, None, presence)
            halved = groups.bag(ids, torch.full(ids.shape, 0.5), presence)
        category = groups.embed.weight[1]
        torch.testing.assert_close(bag[0], times * category)
        torch.testing.assert_close(bag[1], category)
        torch.testing.assert_close(bag[2], times * category)  # padding anywhere in the row
        torch.testing.assert_close(halved, bag / 2)  # input-code dropout weights still apply


@pytest.mark.parametrize(("key", "off"), [("hierarchy", False), ("group_presence", False),
                                          ("wide_l1", 0.0), ("batch_scaled", False)])
def test_a_bundle_from_before_an_option_loads_without_it(key, off, tiny_data, tmp_path):
    """A bundle whose config lacks ``hierarchy``, ``group_presence``, ``wide_l1`` or
    ``batch_scaled`` (saved before it existed) loads with that option off, the others as
    saved, and predicts as it did."""
    student = make_student(tiny_data, **{key: off})
    out = bundle.save_bundle(student, tmp_path / "s")
    cfg = json.loads((out / "model.json").read_text())
    del cfg["config"][key]
    (out / "model.json").write_text(json.dumps(cfg))
    loaded = bundle.load(out, verify=False)
    assert getattr(loaded.model.config, key) == off
    defaults = StudentConfig()
    for other in {"hierarchy", "group_presence", "wide_l1", "batch_scaled"} - {key}:
        assert getattr(loaded.model.config, other) == getattr(defaults, other)  # as saved
    samples = tiny_data.samples("val")
    np.testing.assert_allclose(loaded.model.predict_proba(samples),
                               student.predict_proba(samples), rtol=1e-5, atol=1e-6)


def test_wide_l2_shrinks_with_more_training_samples(tiny_data):
    """sqrt(4000 / N): the configured weight at 4,000 samples, twice it at 1,000, half at
    16,000; fixed with wide_l2_scaled off. The weight used is in the fit summary."""
    cfg = StudentConfig(wide_l2=1e-3)
    assert cfg.wide_penalty(4000) == pytest.approx(1e-3)
    assert cfg.wide_penalty(1000) == pytest.approx(2e-3)
    assert cfg.wide_penalty(16000) == pytest.approx(5e-4)
    assert cfg.replace(wide_l2_scaled=False).wide_penalty(16000) == 1e-3
    student = make_student(tiny_data, alpha=0, wide_l2=1e-3, train={"epochs": 1, "batch_size": 8})
    student.fit(tiny_data, FitContext(progress=False))
    n = len(tiny_data.samples("train"))
    assert student.fit_summary["wide_l2"] == pytest.approx(student.config.wide_penalty(n))
    assert student.fit_summary["wide_l2"] > 1e-3  # a tiny cohort: more shrinkage


def test_the_batch_grows_with_the_cohort(tiny_data):
    """The power of two nearest sqrt(N / 4,000) times the configured batch, never below it:
    32 at the benchmark's 4,201 training visits, 256 at MIMIC-IV's ~154,000; fixed with
    batch_scaled off. The batch used is in the fit summary."""
    cfg = StudentConfig()
    sizes = {n: cfg.batch_for(n) for n in (100, 4000, 4201, 16_600, 42_000, 154_000)}
    assert sizes == {100: 32, 4000: 32, 4201: 32, 16_600: 64, 42_000: 128, 154_000: 256}
    assert cfg.replace(batch_scaled=False).batch_for(154_000) == 32
    assert cfg.replace(train=TrainConfig(batch_size=16)).batch_for(154_000) == 128
    student = make_student(tiny_data, alpha=0, train={"epochs": 1, "batch_size": 8})
    student.fit(tiny_data, FitContext(progress=False))
    assert student.fit_summary["batch_size"] == 8  # a tiny cohort keeps the batch given


def test_wide_l1_is_the_absolute_sum_and_shrinks_the_wide_weights(tiny_data):
    """penalty(power=1) is the sum of |scale x weight| per drug; wide_l1 follows the same
    size rule as wide_l2, is recorded in the fit summary, and a strong one leaves the wide
    path with a smaller L1 norm than none (same seed, same data)."""
    student = make_student(tiny_data, alpha=0)
    student.build()
    wide = student.module.wide
    with torch.no_grad():
        for i, p in enumerate(wide.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i % 3 + 1))
        expected = sum((p * wide.scale).abs().sum() for p in wide.parameters())
        squares = sum((p * wide.scale).pow(2).sum() for p in wide.parameters())
        n_drugs = wide.codes["drugs"].weight.shape[1]
        assert float(wide.penalty(power=1)) == pytest.approx(float(expected) / n_drugs, rel=1e-5)
        assert float(wide.penalty()) == pytest.approx(float(squares) / n_drugs, rel=1e-5)
    assert StudentConfig(wide_l1=1e-3).wide_penalty(1000, 1e-3) == pytest.approx(2e-3)
    assert StudentConfig().wide_l1 == 1e-3 and StudentConfig().wide_l2 == 0  # the defaults

    norms = {}
    for l1 in (0.0, 0.05):
        s = make_student(tiny_data, alpha=0, wide_l1=l1, train={"epochs": 3, "batch_size": 8})
        s.fit(tiny_data, FitContext(progress=False))
        n = len(tiny_data.samples("train"))
        assert s.fit_summary["wide_l1"] == pytest.approx(s.config.wide_penalty(n, l1))
        with torch.no_grad():
            norms[l1] = float(s.module.wide.penalty(power=1))
    assert norms[0.05] < 0.5 * norms[0.0], norms
