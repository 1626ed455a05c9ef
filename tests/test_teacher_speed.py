"""Issue 10: prompts that always fit, length buckets, the layer cache, dtype choice, one
scoring pass. All on the tiny random Llama, so they stay fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dead_pid
from hypothesis import given, settings
from hypothesis import strategies as st

from leader.data.dataset import Dataset
from leader.data.samples import Sample, Visit
from leader.errors import LeaderError
from leader.llm import choose_dtype, cpu_has_bf16, quantization_config, tiny_tokenizer
from leader.models import fast_paths
from leader.models.layer_cache import LayerCache
from leader.models.teacher import Teacher
from leader.pipelines import fit_model
from leader.prompts import PromptBuilder, PromptStats
from leader.train import FitContext, cut_batches, epoch_batches, predict_in_batches, sorted_batches

FAST = {"llm": "tiny", "train": {"batch_size": 4, "lr": 1e-2}}


# --- prompts that always fit ---------------------------------------------------------------------


def test_diagnoses_alone_over_budget_are_cut_from_the_end(small):
    dx, px = small.vocab["diagnoses"].codes, small.vocab["procedures"].codes
    history = Visit((dx[0],), (px[0],), ())
    current = Visit(tuple(dx[:25]), tuple(px[:6]))
    sample = Sample("q/1", "q", (history, history, current), {"gender": "F", "age": 60})
    tok = tiny_tokenizer()
    builder = PromptBuilder(small.schema, tokenizer=tok, profile=True)
    full = builder.build(sample)
    # the current diagnoses alone take more than this budget
    alone = builder.count(builder._titles(current.diagnoses, "diagnoses"))
    budget = alone - 50
    assert budget < full.n_tokens
    p = PromptBuilder(small.schema, tokenizer=tok, profile=True, max_length=budget).build(sample)
    assert p.shortened and p.n_tokens <= budget  # no refusal
    assert p.history_dropped == 2 and p.history_kept == 0
    assert p.procedures_cut == 6 and p.profile_dropped
    assert 0 < p.diagnoses_cut < 25
    kept = 25 - p.diagnoses_cut
    title = small.vocab["diagnoses"].title
    shown = [title(c) for c in dx[:kept]]
    assert all(t in p.text for t in shown)  # the primary (first recorded) diagnoses stay
    assert f"and {p.diagnoses_cut} more" in p.text
    assert title(dx[kept]) + "," not in p.text and not p.text.count(title(dx[24]) + ";")
    assert p.text.endswith("Then, the patient should be prescribed:")
    assert list(p.input_ids) == tok(p.text)["input_ids"]  # tokenized once, the same ids
    stats = PromptStats.of([p, full])
    assert (stats.shortened, stats.history_visits_dropped, stats.procedures_cut) == (1, 2, 6)
    assert stats.diagnoses_cut == p.diagnoses_cut and stats.prompts_with_diagnoses_cut == 1
    assert stats.tokens_max == full.n_tokens and stats.tokens_p50 == p.n_tokens


def test_bisection_finds_the_longest_prompt_that_fits(small):
    dx, px = small.vocab["diagnoses"].codes, small.vocab["procedures"].codes
    sample = Sample("q/0", "q", (Visit(tuple(dx[:3]), tuple(px[:12])),))
    tok = tiny_tokenizer()
    full = PromptBuilder(small.schema, tokenizer=tok).build(sample)
    budget = full.n_tokens - 40
    p = PromptBuilder(small.schema, tokenizer=tok, max_length=budget).build(sample)
    longer = PromptBuilder(small.schema, tokenizer=tok)
    # one procedure more would not fit
    from leader.prompts import _Parts

    parts = _Parts((), 12 - p.procedures_cut + 1, False)
    assert longer.count(longer._render(sample, parts)) > budget >= p.n_tokens


def test_short_titles_stored_by_prepare_and_used_in_prompts(tmp_path):
    from leader.data.cohort import prepare

    prepare("mimic3", "demo", tmp_path / "demo")
    demo = Dataset.load(tmp_path / "demo")
    dx = demo.vocab["diagnoses"]
    assert dx.title("icd9:4019") == "Unspecified essential hypertension"
    assert dx.short_title("icd9:4019") == "Hypertension NOS"  # D_ICD_DIAGNOSES.SHORT_TITLE
    sample = next(s for s in demo.samples() if "icd9:4019" in s.current.diagnoses)
    tok = tiny_tokenizer()
    long = PromptBuilder(demo.schema, tokenizer=tok).build(sample)
    short = PromptBuilder(demo.schema, tokenizer=tok, titles="short").build(sample)
    assert "Hypertension NOS" in short.text and "Hypertension NOS" not in long.text
    assert short.n_tokens < long.n_tokens


def test_short_titles_need_stored_short_titles(small):
    with pytest.raises(LeaderError, match="short titles are not stored"):
        PromptBuilder(small.schema, titles="short")
    with pytest.raises(LeaderError, match="titles"):
        PromptBuilder(small.schema, titles="medium")


# --- batches -------------------------------------------------------------------------------------


def test_bucketed_epoch_sees_every_sample_once_seeded_and_capped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, size=203)
    a = epoch_batches(203, 8, seed=3, epoch=1, lengths=lengths, max_tokens=1200)
    assert sorted(np.concatenate(a).tolist()) == list(range(203))  # each sample once
    assert all(len(b) <= 8 and (len(b) == 1 or len(b) * lengths[b].max() <= 1200) for b in a)
    again = epoch_batches(203, 8, seed=3, epoch=1, lengths=lengths, max_tokens=1200)
    assert all((x == y).all() for x, y in zip(a, again, strict=True))  # seeded
    other = epoch_batches(203, 8, seed=3, epoch=2, lengths=lengths, max_tokens=1200)
    assert [b.tolist() for b in a] != [b.tolist() for b in other]  # a new order every epoch
    padded = sum(len(b) * lengths[b].max() for b in a)
    plain = epoch_batches(203, 8, seed=3, epoch=1)
    padded_plain = sum(len(b) * lengths[b].max() for b in plain)
    assert padded < 0.8 * padded_plain  # buckets waste less padding
    ranks = [epoch_batches(203, 8, 3, 1, r, 2, lengths, 1200) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # DDP ranks step together
    seen = np.concatenate(ranks[0] + ranks[1])
    assert len(seen) == len(set(seen.tolist()))


def test_ranks_of_one_step_get_batches_of_similar_length():
    """DDP ranks finish a step together: pairing a short batch with a long one idles a rank."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 1500, size=400)
    n_batches = len(epoch_batches(400, 8, 5, 0, lengths=lengths, max_tokens=2048))
    for world in (2, 3):
        ranks = [epoch_batches(400, 8, 5, 0, r, world, lengths, 2048) for r in range(world)]
        assert len({len(r) for r in ranks}) == 1
        assert n_batches - world < world * len(ranks[0]) <= n_batches  # < world batches out
        seen = np.concatenate([b for r in ranks for b in r])
        assert len(seen) == len(set(seen.tolist()))
        spread = [max(lengths[b].max() for b in step) / min(lengths[b].max() for b in step)
                  for step in zip(*ranks, strict=True)]
        assert np.median(spread) < 1.2  # random pairs of batches: ~2x apart
    def order(epoch):
        return [b.tolist() for b in epoch_batches(400, 8, 5, epoch, 0, 2, lengths, 2048)]

    assert order(0) == order(0) and order(0) != order(1)  # seeded, a new order every epoch


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=300),
    batch_size=st.integers(1, 16),
    max_tokens=st.one_of(st.none(), st.integers(1, 4096)),
    world=st.integers(1, 4),
    bucketed=st.booleans(),
    seed=st.integers(0, 5),
)
def test_every_rank_gets_the_same_number_of_steps_and_no_sample_twice(
    lengths, batch_size, max_tokens, world, bucketed, seed
):
    """Whatever the split, the ranks of a run step together over disjoint samples, fewer than
    ``world`` batches (or, unbucketed, samples) sit the epoch out, or the split is refused."""
    n = len(lengths)
    lens = lengths if bucketed else None
    alone = epoch_batches(n, batch_size, seed, 0, lengths=lens, max_tokens=max_tokens)
    try:
        ranks = [epoch_batches(n, batch_size, seed, 0, r, world, lens, max_tokens)
                 for r in range(world)]
    except LeaderError:  # only a split too small for the processes
        assert (len(alone) if bucketed else n) < world
        return
    assert len({len(r) for r in ranks}) == 1
    seen = [int(i) for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) and all(len(b) for r in ranks for b in r)
    left_out = len(alone) - sum(len(r) for r in ranks) if bucketed else n - len(seen)
    assert 0 <= left_out < world


def test_fewer_batches_than_processes_is_a_clear_error():
    """A rank without a batch would leave the others waiting forever at the first step."""
    from leader.errors import LeaderError

    for lengths in (None, [50, 60, 70]):
        with pytest.raises(LeaderError, match="3 sample.* fewer than the 4 processes"):
            epoch_batches(3, 8, 0, 0, 0, 4, lengths, 2048)
    assert len(epoch_batches(3, 1, 0, 0, 0, 3, [50, 60, 70], 2048)) == 1


def test_cut_batches_splits_a_long_bucket_and_keeps_an_overlong_row():
    lengths = [100, 100, 100, 100, 900]
    batches = cut_batches([0, 1, 2, 3, 4], lengths, 8, max_tokens=250)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in sorted_batches([5, 1, 3], 2)] == [[1, 2], [0]]


def test_bucketed_prediction_keeps_the_input_order(small):
    model = Teacher(small.schema, FAST)
    samples = small.samples()[:12]
    task = model.task()
    probs = predict_in_batches(task, samples, 5)
    for i in (0, 7, 11):
        alone = predict_in_batches(task, [samples[i]], 1)[0]
        np.testing.assert_allclose(probs[i], alone, atol=1e-5)


# --- layer cache ---------------------------------------------------------------------------------


def test_layer_cache_same_hidden_states_and_stale_refused(small, tmp_path):
    model = Teacher(small.schema, {**FAST, "train_layers": 1})
    model.build()
    module = model.module.eval()
    assert module.split == 1
    trainable = [n for n, p in module.named_parameters() if p.requires_grad and "lora" in n]
    assert trainable and all("layers.1." in n for n in trainable)  # LoRA on the top block only
    task = model.task()
    samples = small.samples("train")[:9]
    task.cache = LayerCache(tmp_path / "cache", "key-a")
    assert task.fill_cache("train", samples, 4) == 9
    batch = task.collate(samples)
    assert batch.lower is not None
    with torch.no_grad():
        cached = module(batch.input_ids, batch.attention_mask, batch.lower)
        uncached = module(batch.input_ids, batch.attention_mask)
        whole = module.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=__import__("leader.models.teacher").models.teacher
                                .position_ids(batch.attention_mask)).last_hidden_state
    for k in range(2):
        torch.testing.assert_close(cached[k], uncached[k], atol=1e-5, rtol=1e-4)
    rows = torch.arange(len(samples))
    last = batch.attention_mask.long().cumsum(1).argmax(1)
    torch.testing.assert_close(uncached[1], whole[rows, last].float(), atol=1e-5, rtol=1e-4)
    # resumable: a second cache on the same directory reuses every shard, and removes the
    # half-written shard of a killed run
    left = tmp_path / "cache" / f".train-00001.safetensors.tmp-{dead_pid()}"
    left.write_bytes(b"half")
    task.cache = LayerCache(tmp_path / "cache", "key-a")
    assert task.fill_cache("train", samples, 4) == 0
    assert not left.exists()
    # stale: another backbone key, or other prompts under the same name
    with pytest.raises(LeaderError, match="another backbone"):
        LayerCache(tmp_path / "cache", "key-b")
    task.cache = LayerCache(tmp_path / "cache", "key-a")
    with pytest.raises(LeaderError, match="stale layer cache"):
        task.fill_cache("train", small.samples("train")[1:10], 4)


def test_gradient_checkpointing_same_loss_and_gradients(small):
    grads = []
    for ckpt in ("off", "on"):
        model = Teacher(small.schema, {**FAST, "gradient_checkpointing": ckpt,
                                       "lora_dropout": 0.0})
        task = model.task()
        module = model.module.train()
        loss, _ = task.loss(module, task.collate(small.samples("train")[:6]))
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in module.named_parameters()
                                    if p.requires_grad}))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][name], atol=1e-6, rtol=1e-4)


def test_prompt_stats_cli(small_dir):
    from typer.testing import CliRunner

    from leader.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["prompt-stats", str(small_dir), "--llm", "tiny",
                                      "--max-length", "200"])
    assert result.exit_code == 0, result.output
    assert "tokens_p90" in result.output and "diagnoses_cut" in result.output


def test_train_layers_out_of_range(small):
    with pytest.raises(LeaderError, match="^train_layers: the backbone has 1 to 2 blocks, got 3"):
        Teacher(small.schema, {**FAST, "train_layers": 3}).build()


# --- precision, quantization, memory -------------------------------------------------------------


def test_bf16_only_where_the_hardware_has_bf16_units(monkeypatch):
    assert cpu_has_bf16("flags : fpu avx2 avx512f avx512_bf16 amx_tile")
    assert cpu_has_bf16("flags : fpu amx_bf16")
    assert not cpu_has_bf16("flags : fpu avx avx2 avx512f")
    cpu = torch.device("cpu")
    monkeypatch.setattr("leader.llm.has_bf16_units", lambda device=None: True)
    assert choose_dtype("auto", cpu) == "bf16"
    monkeypatch.setattr("leader.llm.has_bf16_units", lambda device=None: False)
    assert choose_dtype("auto", cpu) == "fp32"
    assert choose_dtype("bf16", cpu) == "bf16"  # an explicit choice stays
    with pytest.raises(LeaderError, match="^dtype: .fp8. is not supported"):
        choose_dtype("fp8", cpu)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_backbone_keeps_lora_and_drug_layer_fp32(small, dtype):
    model = Teacher(small.schema, {**FAST, "dtype": dtype})
    model.build()
    params = dict(model.module.named_parameters())
    assert params["drug_layer.weight"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in params.items() if "lora_" in n)
    half = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[dtype])
    assert any(p.dtype == half for n, p in params.items() if "lora_" not in n)
    assert model.task().loss_scaling == (dtype == "fp16")  # fp16 only: bf16 has fp32's range


# --- fast paths (models/fast_paths.py) -----------------------------------------------------------


def test_fast_dropout_drops_at_the_rate_scales_and_is_seeded():
    drop = fast_paths.Dropout(0.1).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002  # a million draws
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)  # the gradient takes the same mask
    torch.manual_seed(3)
    assert torch.equal(drop(x.detach()), y.detach())
    rows = drop(torch.ones(4, 1000)).ne(0)
    assert not all(torch.equal(rows[0], r) for r in rows[1:])  # independent per element
    assert torch.equal(drop.eval()(x.detach()), x.detach())
    half = torch.ones(3, 3, dtype=torch.bfloat16)
    assert drop(half).dtype == torch.float32  # peft's cast to the adapter's precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop(torch.ones(3, 3)).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        fast_paths.Dropout(1.0)


def test_fast_paths_give_the_same_model_and_scores(small):
    """On an fp32 backbone the fast paths change only how dropout masks are drawn: the scores
    of the same weights are the same."""
    batch_samples = small.samples("train")[:6]
    probs, modules = [], []
    for fast in (False, True):
        model = Teacher(small.schema, {**FAST, "dtype": "fp32", "fast_paths": fast})
        model.build()
        modules.append(model.module)
        probs.append(model.predict_proba(batch_samples))
    assert modules[0].autocast is None and modules[1].autocast is None  # fp32: no autocast
    assert any(isinstance(m, fast_paths.Dropout) for m in modules[1].modules()) and not any(
        type(m).__module__ == "torch.nn.modules.dropout" for m in modules[1].modules())
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


def test_right_padded_mask():
    assert fast_paths.right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not fast_paths.right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding
    assert not fast_paths.right_padded(torch.tensor([[1, 0, 1]]))


@pytest.mark.parametrize("train_layers", [None, 1])
def test_right_padded_batches_need_no_padding_mask(small, train_layers):
    """Causal attention alone gives a right-padded batch's real tokens the outputs and gradients
    of the masked path (a real token never sees a later pad), through the whole backbone and
    through the blocks above a layer-cache split."""
    model = Teacher(small.schema, {**FAST, "dtype": "fp32", "train_layers": train_layers})
    model.build()
    module, task = model.module, model.task()
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at 0: make the adapters count
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    samples = sorted(small.samples("train"), key=lambda s: len(task.prompt(s).input_ids))
    batch = task.collate([samples[0], samples[len(samples) // 2], samples[-1]])
    assert batch.attention_mask.float().mean() < 0.9  # padded, on the right
    assert module.causal_only
    assert module.mask_and_positions(batch.attention_mask)[0] is None
    assert module.mask_and_positions(batch.attention_mask.flip(1))[0] is not None
    outputs, grads = [], []
    for causal_only in (True, False):
        module.causal_only = causal_only
        module.eval()
        with torch.no_grad():
            outputs.append(module(batch.input_ids, batch.attention_mask))
        module.train()
        torch.manual_seed(1)  # the same dropout masks
        loss, _ = task.loss(module, batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()
                      if p.grad is not None})
        module.zero_grad(set_to_none=True)
    for a, b in zip(outputs[0], outputs[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_bf16_fast_paths_autocast_lora_and_fp32_attention(small):
    """A bf16 backbone: LoRA runs under autocast (weights and gradients fp32), attention in
    fp32 on CPU, and the scores stay near the plain bf16 path (padding: test_teacher.py)."""

    rows = {}
    for fast in (False, True):
        model = Teacher(small.schema, {**FAST, "dtype": "bf16", "fast_paths": fast})
        model.build()
        module = model.module
        rows[fast] = model.predict_proba(small.samples("val")[:8])
    assert module.autocast == torch.bfloat16
    assert module.decoder.config._attn_implementation == fast_paths.FP32_ATTENTION
    assert fast_paths.describe(module.decoder, module.autocast, module.causal_only) == [
        "cheap LoRA dropout masks", "LoRA products in bfloat16 (autocast)", "attention in fp32",
        "no padding mask for right-padded batches"]
    np.testing.assert_allclose(rows[False], rows[True], atol=0.03)
    task = model.task()
    module.train()
    loss, _ = task.loss(module, task.collate(small.samples("train")[:6]))
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # A: 0 at start


def test_fp16_teacher_trains_with_loss_scaling(small, tmp_path):
    """An fp16 backbone trains end to end (here on CPU): the loop scales the loss, logs the
    scale, and the result predicts finite probabilities."""
    model = Teacher(small.schema, {**FAST, "dtype": "fp16",
                                   "train": {**FAST["train"], "max_steps": 3, "log_every": 1}})
    model.fit(small, context=FitContext(tmp_path, progress=False))
    log = (tmp_path / "log.jsonl").read_text()
    assert '"loss_scale"' in log and "NaN" not in log
    assert np.isfinite(model.predict_proba(small.samples("val"))).all()


def test_auto_takes_bf16_only_on_gpus_with_bf16_units(monkeypatch):
    """A V100 or T4 can make bf16 tensors (torch's default check says yes) but emulates their
    matrix multiplies: ``auto`` must not choose bf16 there."""
    import contextlib

    from leader.llm import has_bf16_units

    asked = {}

    def supported(including_emulation: bool = True) -> bool:  # a pre-Ampere GPU
        asked["emulation"] = including_emulation
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    gpu = torch.device("cuda", 0)
    assert not has_bf16_units(gpu) and asked == {"emulation": False}
    assert choose_dtype("auto", gpu) == "fp32"


def test_a_quantized_load_goes_to_this_process_gpu_and_fails_clearly(llama_dir, monkeypatch):
    """Under a launcher each process quantizes onto its own GPU (transformers would put every
    process's copy on the current one, GPU 0); a bitsandbytes that cannot run is one line."""
    from transformers import AutoModelForCausalLM

    from leader.configs import ConfigError
    from leader.llm import _load_hf, default_device

    seen = {}

    def load(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("CUDA Setup failed despite GPU being available\nmore")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load)
    with pytest.raises(ConfigError, match="^quantize: .*bitsandbytes cannot load it "
                                          r"\(CUDA Setup failed despite GPU being available\)$"):
        _load_hf(llama_dir, torch.bfloat16, quantization=object())
    assert seen["device_map"] == {"": default_device()} and "quantization_config" in seen
    seen.clear()
    with pytest.raises(RuntimeError):  # not quantizing: not ours to reword
        _load_hf(llama_dir, torch.float32)
    assert "device_map" not in seen


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal only")
def test_quantize_refused_clearly_without_a_gpu():
    with pytest.raises(LeaderError, match="needs a CUDA GPU"):
        quantization_config("4bit", "bf16")
    with pytest.raises(LeaderError, match="not one of"):
        quantization_config("3bit", "bf16")


def test_memory_estimate_grows_with_tokens_and_shrinks_with_options(small):
    from leader.memory import estimate_peak
    from leader.models.teacher import block_adapters

    model = Teacher(small.schema, FAST)
    model.build()
    cfg, n, lora = model.llm_config, 7_000_000_000, block_adapters(model.module)
    base = estimate_peak(cfg, n, dtype="bf16", batch_tokens=8192, max_length=2048, adapters=lora)
    assert estimate_peak(cfg, n, dtype="bf16", batch_tokens=16384, max_length=2048,
                         adapters=lora).total_gib > base.total_gib
    ckpt = estimate_peak(cfg, n, dtype="bf16", batch_tokens=8192, max_length=2048,
                         checkpointing=True, adapters=lora)
    q4 = estimate_peak(cfg, n, dtype="bf16", batch_tokens=8192, max_length=2048, quantize="4bit",
                       adapters=lora)
    assert ckpt.activations_gib < base.activations_gib and q4.weights_gib < base.weights_gib / 3
    assert "estimated peak memory" in base.line()


# --- one scoring pass ----------------------------------------------------------------------------


def test_metrics_from_the_export_pass_equal_a_separate_scoring_pass(small_dir, small, tmp_path):
    from leader.bundle import load
    from leader.evaluation import split_metrics
    from leader.features import load_features

    out = tmp_path / "teacher"
    notes: list[str] = []
    result = fit_model("teacher", small_dir, out,
                       {**FAST, "train": {**FAST["train"], "max_steps": 2}},
                       progress=False, on_info=notes.append)
    chosen = choose_dtype("auto")  # fp32, or bf16 on a host with bf16 matrix units
    assert any(chosen in n for n in notes) and any("estimated peak" in n for n in notes)
    assert result.training["prompts"]["prompts"] > 0 and 0 <= result.training["padding_share"]
    assert "cheap LoRA dropout masks" in result.training["fast_paths"]
    rec = load(out)
    separate = split_metrics(rec.model, small, rec.threshold)
    for split in ("val", "test"):
        for key in ("jaccard", "f1", "prauc"):
            assert result.metrics[split][key] == pytest.approx(separate[split][key], abs=1e-6)
    ids, hidden, logits = load_features(out, small, "test")
    assert ids == [s.sample_id for s in small.samples("test")]
    probs = rec.model.predict_proba(small.samples("test"))
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), probs, atol=1e-5)
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert "prompts" in manifest["training"] and manifest["training"]["dtype"] == chosen


def test_a_batch_cut_by_the_token_cap_weighs_its_samples_like_a_full_one(small):
    """Length buckets capped in tokens give long prompts smaller batches; the loss is per
    sample (rows / nominal batch x the batch mean), so those samples do not weigh more."""
    model = Teacher(small.schema, FAST)  # nominal batch 4
    task = model.task()
    samples = small.samples("train")[:4]
    with torch.no_grad():
        full, _ = task.loss(model.module, task.collate(samples))
        two, _ = task.loss(model.module, task.collate(samples[:2]))
        task.batch_size = None  # the plain batch mean, for reference
        mean_two, _ = task.loss(model.module, task.collate(samples[:2]))
    torch.testing.assert_close(two, mean_two * 2 / 4)
    assert torch.isfinite(full)
