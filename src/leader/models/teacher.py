"""LEADER(T): a decoder LLM without its LM head, LoRA-tuned, with a drug output layer.

Read top to bottom: pooling (the last real token, or the mean) -> the module (backbone + drug
layer) -> the training task handed to :func:`leader.train.train` -> the :class:`Teacher` model
(build, fit, predict, encode, save/load). ``leader train-teacher`` runs it through
:mod:`leader.pipelines`.

The drug layer scores every drug of the vocabulary from one hidden state, so the teacher can
never name a drug outside the vocabulary (the "out-of-corpus" problem of generating text). Its
bias starts at the training log-odds of each drug, so a short run starts from `popular`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.configs import Config, ConfigError, option
from leader.data.dataset import Dataset
from leader.data.samples import Sample, TensorBatch, multi_hot
from leader.distributed import is_main
from leader.errors import LeaderError
from leader.llm import (
    DTYPES,
    LOSS_SCALED,
    choose_dtype,
    default_device,
    normalize_spec,
    resolve_llm,
    set_threads,
)
from leader.memory import Adapters, estimate_peak, memory_budget_gib
from leader.models import fast_paths
from leader.models.base import MedModel, register, start_from_frequencies
from leader.models.layer_cache import LayerCache, backbone_key
from leader.progress import counter
from leader.prompts import DEFAULT_HISTORY, Prompt, PromptBuilder, PromptStats
from leader.train import (
    FitContext,
    TrainConfig,
    cut_batches,
    default_threads,
    load_trainable_state,
    predict_in_batches,
    sorted_batches,
    trainable_state,
)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LAYER_CACHE = "layer-cache"
DEFAULT_MAX_LENGTH = 2048  # the paper's budget



@dataclass
class TeacherConfig(Config):
    """LEADER(T): the backbone, its LoRA adapter, the prompts, speed and memory, training."""

    llm: str = option("smollm2", "Backbone: smollm2, tiny, or a local Hugging Face causal-LM "
                      "directory.")
    dtype: str = option("auto", "Backbone precision: auto (bf16 where the hardware has bf16 "
                        "matrix units, else fp32); fp16 (GPUs without bf16) trains with dynamic "
                        "loss scaling.", choices=("auto", "fp32", "bf16", "fp16"))
    quantize: str | None = option(None, "Load the backbone in 4bit or 8bit (QLoRA; CUDA + "
                                  "bitsandbytes).", choices=("4bit", "8bit"))
    lora_r: int = option(8, "LoRA rank (0: train the drug layer only).", ge=0)
    lora_alpha: int = option(32, "LoRA alpha.", ge=1)
    lora_dropout: float = option(0.1, "LoRA dropout.", ge=0, le=1)
    lora_targets: list[str] = option(factory=lambda: list(LORA_TARGETS), cli=False,
                                     help="Projections that get LoRA adapters.")
    max_length: int | None = option(None, "Token budget of a prompt (default: 2048, capped at "
                                    "the backbone's positions).", ge=16)
    history: int = option(DEFAULT_HISTORY, "Earlier visits in the prompt (the last K).", ge=0)
    profile: bool = option(False, "Add the profile sentence to prompts.")
    titles: str = option("long", "Code titles in prompts: long, or short (MIMIC-III "
                         "SHORT_TITLE).", choices=("long", "short"))
    max_batch_tokens: int | None = option(2048, "Cap on padded tokens per batch (rows x "
                                          "longest); 0: no cap.", ge=0)
    gradient_checkpointing: str = option(
        "auto", "Recompute activations in the backward pass (less memory, ~30% more compute); "
        "auto: on when the estimated peak exceeds half the RAM / 90% of the GPU.",
        choices=("auto", "on", "off"))
    fast_paths: bool = option(True, "Cheaper LoRA dropout masks; right-padded batches without a "
                              "padding mask (causal attention alone); on a bf16 backbone also "
                              "LoRA's products in bf16 (torch.autocast; its weights stay fp32) "
                              "and, on CPU, attention in fp32 (models/fast_paths.py).")
    train_layers: int | None = option(None, "LoRA on the top K blocks only; the frozen lower "
                                      "blocks' output is cached (a departure from the paper, "
                                      "for small machines). Default: all blocks.", ge=1)
    pooling: str = option("last", "Hidden state fed to the drug layer: last (the paper: the "
                          "last real token) or mean (masked mean over the prompt's tokens; a "
                          "departure, for small backbones).", choices=("last", "mean"))
    margin_weight: float = option(0.0, "Weight of a multi-label margin loss added to BCE.", ge=0)
    predict_batch_size: int = option(16, "Prompts per forward pass when scoring.", ge=1,
                                     identity=False)
    hidden_size: int | None = option(None, "The backbone's hidden size (set when built).",
                                     cli=False)
    train: TrainConfig = option(factory=lambda: TrainConfig(epochs=3, batch_size=8, lr=2e-4))


# --- pooling -----------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token; right and left padding alike ([B] long)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """One fp32 vector per row ([B, H]): the last real token, or the mean over real tokens."""
    if how == "mean":
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        return (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)].float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


# --- the module --------------------------------------------------------------------------------


def weight_counts(module: TeacherModule) -> tuple[int, int]:
    """(weights of the module, those in the backbone's linear layers, which 4/8-bit loading
    quantizes), counted as weights whatever their storage: bitsandbytes packs two 4-bit weights
    into each element of a ``Params4bit``, so its ``numel()`` is half the count."""

    def count(p: torch.Tensor) -> int:
        return p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)

    total = sum(count(p) for p in module.parameters())
    linear = sum(
        count(m.weight) for name, m in module.decoder.named_modules()
        if isinstance(m, nn.Linear) and "lora_" not in name
    )
    return total, linear


class TeacherModule(nn.Module):
    """Backbone (its final norm included, LM head dropped) -> pooled state -> drug logits.

    With ``split`` (``--train-layers``), the blocks below ``split`` are frozen and may be skipped
    by passing their output (``lower``, from the layer cache); both paths run the same ops."""

    def __init__(
        self,
        backbone: nn.Module,
        hidden_size: int,
        n_drugs: int,
        split: int | None = None,
        pooling: str = "last",
        autocast: torch.dtype | None = None,
        causal_only: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.drug_layer = nn.Linear(hidden_size, n_drugs)  # fp32 even on a bf16 backbone
        self.split = split
        self.pooling = pooling
        self.autocast = autocast  # the backbone's blocks run under torch.autocast(this dtype)
        self.causal_only = causal_only  # see mask_and_positions()

    @property
    def decoder(self) -> nn.Module:
        """The bare decoder (e.g. LlamaModel) under the LoRA wrapper."""
        inner = self.backbone
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lower: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(drug logits [B, |drugs|], pooled hidden state [B, H]); the drug layer runs in fp32."""
        if self.split is not None and lower is None:
            lower = self.lower(input_ids, attention_mask)
        with fast_paths.autocast(input_ids.device, self.autocast):
            if self.split is None:
                mask, positions = self.mask_and_positions(attention_mask)
                hidden = self.backbone(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=False,
                ).last_hidden_state
            else:
                hidden = self._blocks(lower, attention_mask, self.split, None)
                hidden = self.decoder.norm(hidden)
        pooled = pool(hidden, attention_mask, self.pooling)
        return self.drug_layer(pooled), pooled

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the frozen blocks below ``split`` ([B, T, H]), without gradients."""
        with torch.no_grad(), fast_paths.autocast(input_ids.device, self.autocast):
            embeds = self.decoder.embed_tokens(input_ids)
            return self._blocks(embeds, attention_mask, 0, self.split)

    def mask_and_positions(
        self, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The padding mask and position ids the blocks take. With ``causal_only`` and every row
        right-padded: no mask (causal attention alone) and positions 0..T-1 on every row (so
        that transformers sees one sequence per row, not pads to mask); a real token never
        sees a later pad token, so the real tokens' outputs are those of the masked path."""
        if self.causal_only and fast_paths.right_padded(attention_mask):
            rows, width = attention_mask.shape
            return None, torch.arange(width, device=attention_mask.device).expand(rows, width)
        return attention_mask, position_ids(attention_mask)

    def _blocks(self, hidden, attention_mask, start: int, stop: int | None) -> torch.Tensor:
        """Decoder blocks ``start:stop`` as the decoder's own forward runs them."""
        from transformers.masking_utils import create_causal_mask

        decoder = self.decoder
        padding, positions = self.mask_and_positions(attention_mask)
        mask = create_causal_mask(
            config=decoder.config,
            inputs_embeds=hidden,
            attention_mask=padding,
            past_key_values=None,
            position_ids=positions,
        )
        rotary = decoder.rotary_emb(hidden, position_ids=positions)
        for block in decoder.layers[start:stop]:
            hidden = block(
                hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions
            )
        return hidden


def split_point(backbone: nn.Module, train_layers: int | None) -> int | None:
    """Index of the first trained block for ``train_layers`` (None: all blocks train)."""
    if train_layers is None:
        return None
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if not all(hasattr(backbone, a) for a in needed):
        raise ConfigError(
            "train_layers", f"this backbone ({type(backbone).__name__}) is not a Llama-style "
            "decoder (embed_tokens, layers, norm, rotary_emb); train all layers instead"
        )
    n = len(backbone.layers)
    if not 1 <= int(train_layers) <= n:
        raise ConfigError("train_layers", f"the backbone has 1 to {n} blocks, got {train_layers}")
    return n - int(train_layers)


def enable_checkpointing(decoder: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them."""
    enable = getattr(decoder, "activation_checkpointing_enable", None)  # transformers >= 5
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        decoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def build_module(
    llm: Any, n_drugs: int, config: TeacherConfig, dtype: str = "fp32",
    device: torch.device | None = None,
) -> TeacherModule:
    """Strip the LM head, add LoRA adapters (on the top blocks only with ``train_layers``),
    add the drug layer; with ``fast_paths``, the faster equivalents of
    :mod:`leader.models.fast_paths` for a ``dtype`` backbone on ``device``."""
    backbone = llm.model.base_model  # e.g. LlamaModel: embeddings, layers, final norm
    for p in backbone.parameters():
        p.requires_grad_(False)
    split = split_point(backbone, config.train_layers)
    if config.gradient_checkpointing == "on":
        enable_checkpointing(backbone)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        layers = {} if split is None else {
            "layers_to_transform": list(range(split, len(backbone.layers))),
            "layers_pattern": "layers",
        }
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets),
            bias="none",
            **layers,
        )
        try:
            with warnings.catch_warnings():  # peft calls a deprecated transformers alias
                warnings.simplefilter("ignore", FutureWarning)
                backbone = get_peft_model(backbone, lora)
        except ValueError as e:
            raise ConfigError(
                "lora_targets", f"{list(config.lora_targets)} not found in the model "
                f"{config.llm} ({str(e).splitlines()[0]})"
            ) from None
    autocast = None
    if config.fast_paths and config.quantize is None:  # bitsandbytes layers cast on their own
        fast_paths.use_fast_dropout(backbone)
        if dtype == "bf16":
            autocast = torch.bfloat16
            if (device or torch.device("cpu")).type == "cpu":
                fast_paths.use_fp32_attention(llm.model.base_model)
    return TeacherModule(backbone, llm.hidden_size, n_drugs, split, config.pooling, autocast,
                         causal_only=config.fast_paths)


# projections that read one tensor: without dropout their adapters keep it once
SHARED_INPUT = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention",
                "gate_proj": "mlp", "up_proj": "mlp"}


def block_adapters(module: TeacherModule) -> Adapters | None:
    """The LoRA adapters of the top block, as the memory estimate counts them (None: the
    blocks carry none and only the drug layer trains)."""
    own: list[int] = []  # each adapter's input width
    shared: dict[str, int] = {}  # each distinct input's width
    count, rank, dropout, weight_dtype = 0, 0, False, torch.float32
    for path, layer in module.decoder.layers[-1].named_modules():
        weights = getattr(layer, "lora_A", None)
        if not isinstance(weights, nn.ModuleDict):
            continue
        site = SHARED_INPUT.get(path.rsplit(".", 1)[-1], path)
        for name, a in weights.items():
            count += 1
            rank, weight_dtype = a.out_features, a.weight.dtype
            dropout |= float(getattr(layer.lora_dropout[name], "p", 0.0)) > 0
            own.append(a.in_features)
            shared[site] = a.in_features
    if not count:
        return None
    backbone = next(module.decoder.parameters()).dtype
    # dropout, or peft's cast to the adapters' precision, gives every adapter its own copy
    own_copy = dropout or (module.autocast is None and weight_dtype != backbone)
    return Adapters(
        inputs=own if own_copy else list(shared.values()), count=count, rank=rank,
        dropout=dropout,
        dtype=next(n for n, d in DTYPES.items() if d == (module.autocast or weight_dtype)),
        trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
    )


# --- the training task -------------------------------------------------------------------------


@dataclass
class PromptBatch(TensorBatch):
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor
    lower: torch.Tensor | None = None  # cached lower-block output ([B, T, H]), train_layers only

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(*(None if t is None else t.to(device) for t in
                             (self.input_ids, self.attention_mask, self.target, self.lower)))


class TeacherTask:
    """What the shared training loop needs: prompts -> token batches -> BCE (+ margin).

    Each prompt is built and tokenized once (its ids are kept); batches are padded from those
    ids, and ``lengths`` lets the loop bucket batches by length (capped by ``max_batch_tokens``).
    """

    def __init__(self, module: TeacherModule, builder: PromptBuilder, tokenizer, drugs, margin,
                 max_batch_tokens: int | None = None, loss_scaling: bool = False,
                 batch_size: int | None = None):
        self.module = module
        # the nominal batch: a batch the token cap cut smaller weighs its samples the same
        self.batch_size = batch_size
        self.loss_scaling = loss_scaling  # fp16 backbone: the loop scales the loss
        self.builder = builder
        self.tokenizer = tokenizer
        self.drugs = drugs
        self.margin_weight = float(margin)
        self.max_batch_tokens = max_batch_tokens
        self.prompts: dict[str, Prompt] = {}  # sample id -> prompt, built once per run
        self.cache: LayerCache | None = None
        self.tokens = {"real": 0, "padded": 0}  # of training batches: the padding share

    def prompt(self, sample: Sample) -> Prompt:
        p = self.prompts.get(sample.sample_id)
        if p is None:
            p = self.prompts[sample.sample_id] = self.builder.build(sample)
        return p

    @property
    def shortened(self) -> set[str]:
        return {sid for sid, p in self.prompts.items() if p.shortened}

    def stats(self) -> PromptStats:
        return PromptStats.of(list(self.prompts.values()))

    def lengths(self, samples: Sequence[Sample]) -> list[int]:
        return [len(self.prompt(s).input_ids) for s in samples]

    def build_prompts(self, samples: Sequence[Sample], progress: bool = False) -> None:
        """Build and tokenize these samples' prompts now (a full cohort takes minutes: with
        ``progress``, under a progress bar)."""
        with counter("prompts", len(samples), progress) as done:
            for s in samples:
                self.prompt(s)
                done(1)

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) padded on the tokenizer's side, as it would pad them."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    def collate(self, samples: Sequence[Sample]) -> PromptBatch:
        rows = [self.prompt(s).input_ids for s in samples]
        input_ids, mask = self.pad(rows)
        if torch.is_grad_enabled():  # a training batch (validation runs under no_grad)
            self.tokens["real"] += int(mask.sum())
            self.tokens["padded"] += mask.numel()
        target = multi_hot([s.target for s in samples], self.drugs)
        lower = None
        if self.cache is not None and all(s.sample_id in self.cache for s in samples):
            lower = self._lower(samples, mask)
        return PromptBatch(input_ids, mask, target, lower)

    def _lower(self, samples: Sequence[Sample], mask: torch.Tensor) -> torch.Tensor:
        first = self.cache.get(samples[0].sample_id)
        out = torch.zeros((*mask.shape, first.shape[-1]), dtype=first.dtype)
        left = self.tokenizer.padding_side == "left"
        for i, s in enumerate(samples):
            h = first if i == 0 else self.cache.get(s.sample_id)
            span = slice(mask.shape[1] - h.shape[0], None) if left else slice(0, h.shape[0])
            out[i, span] = h
        return out

    def fill_cache(
        self, name: str, samples: Sequence[Sample], batch_size: int,
        on_done: Callable[[int], None] | None = None,
    ) -> int:
        """Compute the lower blocks' output of ``samples`` once (reusing finished shards);
        ``on_done(n)``: n more prompts are cached."""
        module = self.module
        device = next(module.parameters()).device
        done = on_done or (lambda _n: None)

        def compute(rows: list[int]) -> list[torch.Tensor]:
            chunk = [samples[i] for i in rows]
            out: list[torch.Tensor] = [torch.zeros(0)] * len(chunk)
            for batch in sorted_batches(self.lengths(chunk), batch_size, self.max_batch_tokens):
                ids, mask = self.pad([self.prompt(chunk[i]).input_ids for i in batch])
                hidden = module.lower(ids.to(device), mask.to(device)).cpu()
                for j, i in enumerate(batch):
                    out[i] = hidden[j][mask[j].bool()].clone()  # the real tokens only
                done(len(batch))
            return out

        tokens = [self.prompt(s).input_ids for s in samples]
        return self.cache.fill(name, [s.sample_id for s in samples], tokens, compute, done)

    def loss(self, module: nn.Module, batch: PromptBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, _ = module(batch.input_ids, batch.attention_mask, batch.lower)
        bce = F.binary_cross_entropy_with_logits(logits, batch.target)
        logs = {"bce": float(bce.detach())}
        total = bce
        if self.margin_weight:
            margin = F.multilabel_margin_loss(logits, margin_targets(batch.target))
            total = bce + self.margin_weight * margin
            logs["margin"] = float(margin.detach())
        # per sample, not per batch: length buckets capped in tokens make batches of long
        # prompts smaller, and a batch mean would weigh each of their samples more
        rows = batch.target.shape[0]
        if self.batch_size and rows < self.batch_size:
            total = total * (rows / self.batch_size)
        return total, logs

    def predict(self, module: nn.Module, batch: PromptBatch) -> torch.Tensor:
        logits, _ = module(batch.input_ids, batch.attention_mask, batch.lower)
        return torch.sigmoid(logits)

    def targets(self, batch: PromptBatch) -> torch.Tensor:
        return batch.target


def margin_targets(multi_hot_target: torch.Tensor) -> torch.Tensor:
    """``multilabel_margin_loss`` wants the positive indices first, then -1."""
    out = torch.full_like(multi_hot_target, -1, dtype=torch.long)
    for i, row in enumerate(multi_hot_target):
        idx = row.nonzero().flatten()
        out[i, : len(idx)] = idx
    return out


# --- the model ---------------------------------------------------------------------------------


@register
class Teacher(MedModel):
    """The LEADER teacher behind the common model interface (``leader.bundle`` loads it)."""

    name = "teacher"
    config_class = TeacherConfig
    config: TeacherConfig

    def __init__(self, schema, config: TeacherConfig | dict[str, Any] | None = None):
        super().__init__(schema, config)
        self.module: TeacherModule | None = None
        self._task: TeacherTask | None = None
        self.dtype: str | None = None  # the backbone precision chosen (``auto`` resolved)
        self.device_type = "cpu"  # where the module runs (or, built without weights, would)
        # lower-block outputs of train + val from the last fit (``train_layers``): valid while
        # its run directory exists; the pipeline drops it after the export
        self.layer_cache: LayerCache | None = None

    def build(self, weights: bool = True, device: torch.device | None = None) -> None:
        """Load the backbone, add the adapter and drug layer (refuses a bad llm or length).

        ``weights=False`` builds the same module on the meta device, as it would run on
        ``device`` (default: this machine's), for :func:`memory_plan` only."""
        cfg = self.config
        device = device or default_device()
        if weights:
            set_threads(cfg.train.threads or default_threads(), device)
        cfg.llm = normalize_spec(cfg.llm)
        if cfg.dtype == "auto" and device.type == "cuda" and not torch.cuda.is_available():
            self.dtype = "bf16"  # a plan for a GPU elsewhere: assume a recent one
        else:
            self.dtype = choose_dtype(cfg.dtype, device)
        # recorded as chosen, so that a saved teacher is loaded (and its features exported) in
        # the precision it was trained in, on any machine
        cfg.dtype = self.dtype
        self.device_type = device.type
        llm = resolve_llm(cfg.llm, self.dtype, cfg.quantize, weights=weights)
        if cfg.max_length is None:  # the paper's budget, if the backbone takes it
            cfg.max_length = min(DEFAULT_MAX_LENGTH, llm.max_positions)
        if not 16 <= cfg.max_length <= llm.max_positions:
            raise ConfigError(
                "max_length", f"the model {cfg.llm} takes 16 to {llm.max_positions} tokens, "
                f"got {cfg.max_length}"
            )
        self.llm_config = llm.model.config
        self.tokenizer = llm.tokenizer
        cfg.hidden_size = llm.hidden_size
        with torch.random.fork_rng(devices=[]):  # the same start for every run and replica
            torch.manual_seed(cfg.train.seed)
            self.module = build_module(llm, len(self.schema.drugs), cfg, self.dtype, device)
        self.module.drug_layer.to(torch.float32)
        if weights:
            self.module.to(device)
        self._task = None

    def prompt_builder(self) -> PromptBuilder:
        return PromptBuilder(
            self.schema,
            history=self.config.history,
            profile=self.config.profile,
            max_length=self.config.max_length,
            tokenizer=self.tokenizer,
            titles=self.config.titles,
        )

    def task(self) -> TeacherTask:
        """The one task of this model: its prompts are built and tokenized once."""
        if self.module is None:
            self.build()
        if self._task is None:
            self._task = TeacherTask(
                self.module,
                self.prompt_builder(),
                self.tokenizer,
                self.schema.drugs,
                self.config.margin_weight,
                self.config.max_batch_tokens,
                loss_scaling=self.dtype in LOSS_SCALED,
                batch_size=self.config.train.batch_size,
            )
        return self._task

    def memory_estimate(
        self, samples: Sequence[Sample], checkpointing: bool | None = None
    ) -> Any:
        """Estimated training peak for the largest batch these samples make."""
        if checkpointing is None:
            checkpointing = self.config.gradient_checkpointing == "on"
        return self.estimate_batch(*self.largest_batch(samples), checkpointing)

    def largest_batch(self, samples: Sequence[Sample]) -> tuple[int, int]:
        """(padded tokens, row length) of the largest training batch these samples can make."""
        lengths = self.task().lengths(samples)
        longest = max(lengths, default=0)
        tokens = self.config.train.batch_size * longest
        if self.config.max_batch_tokens:
            tokens = min(tokens, max(self.config.max_batch_tokens, longest))
        return tokens, longest

    def estimate_batch(self, batch_tokens: int, longest: int, checkpointing: bool) -> Any:
        """Estimated training peak for a batch of ``batch_tokens`` padded tokens whose rows
        are ``longest`` tokens, as this module runs it."""
        n_params, quantizable = weight_counts(self.module)
        return estimate_peak(
            self.llm_config,
            n_params,
            batch_tokens=batch_tokens,
            trained_layers=self.config.train_layers,
            checkpointing=checkpointing,
            quantize=self.config.quantize,
            quantized_params=quantizable,
            device_type=self.device_type,
            **self.block_memory(longest),
        )

    def block_memory(self, longest: int) -> dict[str, Any]:
        """How a trained block of this module keeps tensors for the backward pass (the
        arguments of :func:`leader.memory.block_bytes_per_token`): its precision, adapters,
        and attention kernel for rows of ``longest`` tokens."""
        module = self.module
        implementation = getattr(module.decoder.config, "_attn_implementation", "sdpa") or "sdpa"
        if implementation == "eager":
            attention = "eager"
        elif "flash" in implementation or (
            module.causal_only and self.tokenizer.padding_side != "left"
        ):  # flash kernels take no mask; right-padded batches are passed without one
            attention = "memory-efficient"
        else:
            attention = "masked"
        return {
            "dtype": self.dtype,
            "max_length": longest,
            "adapters": block_adapters(module),
            "attention": attention,
            "attention_dtype": "fp32" if implementation == fast_paths.FP32_ATTENTION else None,
        }

    def plan_memory(
        self, samples: Sequence[Sample], say: Callable[[str], None] = lambda _line: None
    ) -> tuple[Any, bool]:
        """(memory estimate, checkpointing on?) for training on ``samples``; with ``auto``,
        switches gradient checkpointing on when the estimate without it is over budget."""
        estimate = self.memory_estimate(samples)
        mode = self.config.gradient_checkpointing
        if mode != "auto":
            return estimate, mode == "on"
        budget = memory_budget_gib(next(self.module.parameters()).device)
        if estimate.total_gib <= budget:
            return estimate, False
        enable_checkpointing(self.module.decoder)
        say(f"gradient checkpointing on: {estimate.line()} without it, over the budget of "
            f"{budget:.1f} GiB")
        return self.memory_estimate(samples, checkpointing=True), True

    def fit(self, data: Dataset, context: FitContext | None = None) -> Teacher:
        """Train; ``context.on_info`` gets one-line notes before training (precision, prompt
        lengths and reductions, the memory estimate, the layer cache)."""
        context = context or FitContext()
        say = context.on_info or (lambda _line: None)
        task = self.task()
        train_samples, val_samples = data.samples("train"), data.samples("val")
        t0 = time.perf_counter()
        task.build_prompts([*train_samples, *val_samples], context.progress and is_main())
        fast = fast_paths.describe(self.module.decoder, self.module.autocast,
                                   self.module.causal_only)
        say(f"backbone {self.config.llm} in {self.dtype}"
            f"{', ' + self.config.quantize if self.config.quantize else ''}; "
            f"{torch.get_num_threads()} torch thread(s)"
            f"{'; ' + ', '.join(fast) if fast else ''}")
        say(f"prompts (train + val): {task.stats().line()} [{time.perf_counter() - t0:.0f} s]")
        estimate, checkpointing = self.plan_memory(train_samples, say)
        say(estimate.line())
        cached = 0
        if self.module.split is not None:
            decoder = self.module.decoder
            key = backbone_key(self.config.llm, self.dtype, decoder.config._attn_implementation,
                               self.module.split, decoder.layers[: self.module.split])
            run_dir = context.run_dir
            directory = None if run_dir is None else run_dir / LAYER_CACHE
            task.cache = LayerCache(directory, key)
            bs = self.config.predict_batch_size
            with counter("layer cache", len(train_samples) + len(val_samples),
                         context.progress and is_main()) as done:
                cached = task.fill_cache("train", train_samples, bs, done)
                cached += task.fill_cache("val", val_samples, bs, done)
            say(f"layer cache: lower {self.module.split} blocks computed for {cached} prompts")
        start_from_frequencies(self.module.drug_layer.bias, data)  # a resumed run overwrites it
        task.tokens = {"real": 0, "padded": 0}
        self.run_loop(task, data, context)
        self.layer_cache = task.cache  # the export after training reuses it (then dropped)
        stats = task.stats()
        padded = task.tokens["padded"]
        self.fit_summary.update(
            prompts_shortened=stats.shortened,
            prompts_built=stats.prompts,
            prompts=stats.to_dict(),
            dtype=self.dtype,
            fast_paths=fast,
            padding_share=round(1 - task.tokens["real"] / padded, 4) if padded else None,
            memory_estimate_gib=estimate.total_gib,
            gradient_checkpointing=checkpointing,
            layer_cache_computed=cached,
        )
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return predict_in_batches(self.task(), samples, self.config.predict_batch_size)

    @torch.no_grad()
    def encode(
        self, samples: Sequence[Sample], on_progress: Callable[[int], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled hidden states [N, H], drug logits [N, |drugs|]) in fp32, on the CPU, in the
        order of ``samples``; computed in length-sorted batches (least padding), reading the
        lower blocks' output from the layer cache where the last fit left one."""
        task = self.task()
        task.cache = self.layer_cache
        self.module.eval()
        device = next(self.module.parameters()).device
        hidden = torch.zeros(len(samples), int(self.config.hidden_size or 0))
        logits = torch.zeros(len(samples), len(self.schema.drugs))
        batches = sorted_batches(task.lengths(samples), self.config.predict_batch_size,
                                 task.max_batch_tokens)
        for rows in batches:
            batch = task.collate([samples[i] for i in rows]).to(device)
            lg, pooled = self.module(batch.input_ids, batch.attention_mask, batch.lower)
            index = torch.as_tensor(rows)
            hidden[index], logits[index] = pooled.float().cpu(), lg.float().cpu()
            if on_progress is not None:
                on_progress(len(rows))
        return hidden, logits

    # state: only what training changed (LoRA adapter + drug layer); the backbone is rebuilt
    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module) if self.module is not None else {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))[:3]
            raise LeaderError(
                f"teacher weights do not fit the backbone {self.config.llm} with this LoRA "
                f"config (e.g. missing {missing})"
            )
        load_trainable_state(self.module, tensors)
        self.module.eval()


# --- planning memory before a run --------------------------------------------------------------


def memory_plan(
    data: Dataset,
    config: TeacherConfig | dict[str, Any] | None = None,
    device: str | None = None,
    length: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """What ``train-teacher`` with ``config`` would need, without loading the weights: the
    estimate for the largest batch of ``data``'s training prompts (or, with ``length``, a batch
    of rows of that many tokens, as many as the batch size and token cap allow), with gradient
    checkpointing off and on, for ``device`` (default: this machine's; ``cuda`` plans for a
    GPU from any machine), and the budget ``--gradient-checkpointing auto`` compares with when
    the device is here."""
    if device not in (None, "cpu", "cuda"):
        raise ConfigError("device", f"expected cpu or cuda, got {device!r}")
    model = Teacher(data.schema, config)
    target = torch.device(device) if device else default_device()
    if model.config.quantize and target.type != "cuda":
        raise ConfigError("quantize", f"{model.config.quantize} loading needs a CUDA GPU; plan "
                          "for one with --device cuda")
    model.build(weights=False, device=target)
    cfg = model.config
    if length is None:
        train = data.samples("train")  # built from the table on each call: once here
        model.task().build_prompts(train, progress)
        tokens, longest = model.largest_batch(train)
    else:
        if not 1 <= length <= cfg.max_length:
            raise ConfigError("length", f"must be 1 to --max-length ({cfg.max_length}), "
                              f"got {length}")
        size = cfg.train.batch_size
        rows = len(cut_batches(range(size), [length] * size, size, cfg.max_batch_tokens)[0])
        tokens, longest = rows * length, length
    here = target.type == "cpu" or torch.cuda.is_available()
    return {
        "llm": cfg.llm,
        "device": target.type,
        "dtype": model.dtype,
        "batch_tokens": tokens,
        "longest": longest,
        "without_checkpointing": model.estimate_batch(tokens, longest, False),
        "with_checkpointing": model.estimate_batch(tokens, longest, True),
        "budget_gib": round(memory_budget_gib(target), 1) if here else None,
    }
