"""The peak-memory estimate counts what autograd really keeps for the teacher's backward pass.

WHY: the estimate decides ``--gradient-checkpointing auto`` and tells a user whether a backbone
fits; its count per token of a trained block was read off autograd's saved tensors, so these
tests hold it to them on the tiny random Llama, path by path."""

from __future__ import annotations

import pytest
import torch

from leader.memory import CPU_ALLOCATOR_SLACK, Adapters, block_bytes_per_token, estimate_peak
from leader.models.teacher import PromptBatch, Teacher, block_adapters


def kept_bytes(model: Teacher, rows: list[list[int]]) -> int:
    """Bytes of the distinct tensors one training forward saves for backward, weights aside."""
    task, module = model.task(), model.module.train()
    input_ids, mask = task.pad(rows)
    batch = PromptBatch(input_ids, mask, torch.zeros(len(rows), len(model.schema.drugs)))
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = task.loss(module, batch)
    loss.backward()  # the graph was whole
    return sum(kept.values())


def estimated_bytes(model: Teacher, rows: list[list[int]]) -> float:
    """The estimate's activations for this batch, in bytes."""
    width = max(len(r) for r in rows)
    per_token = block_bytes_per_token(model.llm_config, **model.block_memory(width))
    trained = model.config.train_layers or model.llm_config.num_hidden_layers
    estimate = model.estimate_batch(len(rows) * width, width, checkpointing=False)
    assert estimate.activations_gib == round(len(rows) * width * trained * per_token / 2**30, 2)
    return len(rows) * width * trained * per_token


# (teacher options, a padded batch?) for each path the estimate tells apart
PATHS = [
    ({"dtype": "bf16"}, True),  # autocast LoRA, fp32 attention, no mask for right padding
    ({"dtype": "fp32"}, True),
    ({"dtype": "fp32", "fast_paths": False}, True),  # a padding mask, heads repeated
    ({"dtype": "bf16", "fast_paths": False}, True),  # LoRA in fp32 on a bf16 backbone
    ({"dtype": "bf16", "lora_dropout": 0.0}, False),  # q, k, v adapters share one input
    ({"dtype": "fp32", "fast_paths": False, "lora_dropout": 0.0}, True),
    ({"dtype": "bf16", "train_layers": 1}, True),  # only the top block keeps anything
    ({"dtype": "fp32", "fast_paths": False, "attention": "eager"}, True),  # the softmax matrix
    ({"dtype": "bf16", "fast_paths": False, "attention": "eager"}, True),  # ... and its copy
]


@pytest.mark.parametrize(("options", "padded"), PATHS, ids=[str(o) for o, _ in PATHS])
def test_the_estimate_counts_what_the_backward_pass_keeps(small, options, padded):
    options = dict(options)
    attention = options.pop("attention", None)
    model = Teacher(small.schema, {"llm": "tiny", **options})
    model.build()
    if attention is not None:  # a backbone loaded with another attention implementation
        model.module.decoder.config._attn_implementation = attention
    rows = [list(range(5, 101)), list(range(5, 101 if not padded else 70))]
    measured, estimated = kept_bytes(model, rows), estimated_bytes(model, rows)
    # within a few per cent: the estimate leaves out what does not grow with blocks x tokens
    # (rotary tables, autocast's copies of the adapters' weights), and it counts the lowest
    # trained block in full, which keeps less (its input needs no gradient)
    assert 0.95 * measured <= estimated <= 1.15 * measured, (measured, estimated)


def test_without_adapters_the_blocks_keep_nothing(small):
    model = Teacher(small.schema, {"llm": "tiny", "lora_r": 0})
    model.build()
    assert block_adapters(model.module) is None
    assert model.estimate_batch(4096, 2048, checkpointing=False).activations_gib == 0


def test_checkpointing_keeps_block_inputs_and_one_block(small):
    model = Teacher(small.schema, {"llm": "tiny", "dtype": "fp32"})
    model.build()
    cfg, adapters = model.llm_config, block_adapters(model.module)
    assert adapters is not None and adapters.dropout and adapters.count == 7
    full = estimate_peak(cfg, 1, dtype="fp32", batch_tokens=2**20, max_length=1024,
                         adapters=adapters)
    ckpt = estimate_peak(cfg, 1, dtype="fp32", batch_tokens=2**20, max_length=1024,
                         adapters=adapters, checkpointing=True)
    per_block = block_bytes_per_token(cfg, dtype="fp32", max_length=1024, adapters=adapters)
    layers = cfg.num_hidden_layers
    assert ckpt.activations_gib == round(2**20 * (layers * cfg.hidden_size * 4 + per_block)
                                         / 2**30, 2)
    assert ckpt.activations_gib < full.activations_gib


def test_4bit_weights_are_counted_unpacked_and_only_linear_layers_quantized(small):
    """bitsandbytes quantizes the backbone's linear layers only, and packs two 4-bit weights per
    element of a ``Params4bit`` (its numel() is half the count): the estimate must count the
    embeddings and norms at the backbone's precision and every 4-bit weight once."""
    from leader.models.teacher import weight_counts

    model = Teacher(small.schema, {"llm": "tiny", "dtype": "bf16"})
    model.build()
    cfg = model.llm_config
    h, inter, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads
    head = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    per_block = h * cfg.num_attention_heads * head * 2 + 2 * h * kv * head + 3 * h * inter
    total, linear = weight_counts(model.module)
    assert linear == cfg.num_hidden_layers * per_block  # not LoRA's, not the drug layer's
    assert total == sum(p.numel() for p in model.module.parameters())

    class Params4bit(torch.nn.Parameter):  # what bitsandbytes' packed weight looks like
        pass

    proj = model.module.decoder.layers[0].mlp.down_proj.base_layer
    packed = torch.zeros(proj.weight.numel() // 2, 1, dtype=torch.uint8)
    proj.weight = Params4bit(packed, requires_grad=False)
    assert weight_counts(model.module) == (total, linear)

    big = {"dtype": "bf16", "batch_tokens": 2048, "max_length": 2048, "quantize": "4bit"}
    n, quantized = 6_700_000_000, 6_500_000_000
    est = estimate_peak(cfg, n, quantized_params=quantized, **big)
    assert est.weights_gib == round((quantized * 0.55 + (n - quantized) * 2) / 2**30, 2)
    assert estimate_peak(cfg, n, **big).weights_gib == round(n * 0.55 / 2**30, 2)


def test_attention_kinds_and_the_cpu_slack():
    from types import SimpleNamespace

    cfg = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                          num_key_value_heads=32, num_hidden_layers=32)  # LLaMA-7B's shape
    lora = Adapters(inputs=[4096] * 6 + [11008], count=7, rank=8, dropout=True, dtype="bf16",
                    trainable=20_000_000)
    kinds = {kind: estimate_peak(cfg, 6_700_000_000, dtype="bf16", batch_tokens=2048,
                                 max_length=2048, adapters=lora, attention=kind,
                                 device_type="cuda")
             for kind in ("memory-efficient", "masked", "eager")}
    eff, masked, eager = (kinds[k].activations_gib for k in kinds)
    assert eff < masked < eager  # a mask row per token; the softmax matrix per head
    assert kinds["eager"].activations_gib > 2 * eff and kinds["eager"].slack_gib == 0
    cpu = estimate_peak(cfg, 6_700_000_000, dtype="bf16", batch_tokens=2048, max_length=2048,
                        adapters=lora)
    assert cpu.slack_gib == pytest.approx(CPU_ALLOCATOR_SLACK[False] * cpu.activations_gib,
                                          abs=0.01)
    assert "allocator slack" in cpu.line() and "allocator" not in kinds["masked"].line()
    # LLaMA-7B in bf16, LoRA with dropout on every projection, one 2,048-token row: ~12.5 GiB
    # of weights; its activations need checkpointing to fit a 24 GB GPU
    ckpt = estimate_peak(cfg, 6_700_000_000, dtype="bf16", batch_tokens=2048, max_length=2048,
                         adapters=lora, checkpointing=True, device_type="cuda")
    assert 12 < ckpt.total_gib < 0.9 * 24 < kinds["memory-efficient"].total_gib


# --- planning before a run: `leader teacher-memory` ----------------------------------------------


def test_a_plan_without_weights_matches_the_loaded_model(small, llama_dir):
    """The plan builds the backbone on the meta device from its config (seconds and no memory
    for LLaMA-7B); it must estimate what the loaded model estimates."""
    from leader.models.teacher import memory_plan

    options = {"llm": str(llama_dir), "dtype": "fp32", "train": {"batch_size": 4}}
    plan = memory_plan(small, options)
    loaded = Teacher(small.schema, options)
    loaded.build()
    tokens, longest = loaded.largest_batch(small.samples("train"))
    assert (plan["batch_tokens"], plan["longest"]) == (tokens, longest) and 4 <= tokens
    assert plan["without_checkpointing"] == loaded.estimate_batch(tokens, longest, False)
    assert plan["with_checkpointing"] == loaded.estimate_batch(tokens, longest, True)
    assert plan["budget_gib"] > 0
    gpu = memory_plan(small, options, device="cuda", length=100)  # from a machine without one
    assert gpu["batch_tokens"] == 400 and gpu["without_checkpointing"].slack_gib == 0
    if not torch.cuda.is_available():
        assert gpu["budget_gib"] is None


def test_teacher_memory_cli(small_dir, monkeypatch, capsys):
    from helpers import run_cli

    code, out, err = run_cli(["teacher-memory", "--data", str(small_dir), "--llm", "tiny",
                              "--batch-size", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert "without checkpointing: estimated peak memory" in out and "would turn it off" in out
    code, _, err = run_cli(["teacher-memory", "--data", str(small_dir), "--llm", "tiny",
                            "--length", "0"], monkeypatch, capsys)
    assert code == 2 and "length" in err and "Traceback" not in err
    # `--max-batch-tokens 0` is no cap (documented): the whole batch of long rows in one
    code, out, err = run_cli(["teacher-memory", "--data", str(small_dir), "--llm", "tiny",
                              "--batch-size", "8", "--length", "2048", "--max-batch-tokens", "0"],
                             monkeypatch, capsys)
    assert code == 0 and "16,384 padded tokens" in out, err
    code, _, err = run_cli(["teacher-memory", "--data", str(small_dir), "--llm", "tiny",
                            "--quantize", "4bit", "--device", "cpu"], monkeypatch, capsys)
    assert code == 2 and "--device cuda" in err and "Traceback" not in err
    code, _, err = run_cli(["teacher-memory", "--data", str(small_dir), "--llm", "tiny",
                            "--device", "gpu"], monkeypatch, capsys)
    assert code == 2 and "cpu or cuda" in err and "Traceback" not in err
