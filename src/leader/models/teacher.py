"""LEADER(T): a decoder LLM without its LM head, LoRA-tuned, with a drug output layer.

Read top to bottom: pooling of the last real token -> the module (backbone + drug layer) ->
the training task handed to :func:`leader.train.train` -> the :class:`Teacher` model (build,
fit, predict, encode, save/load) -> :func:`train_teacher`, what ``leader train-teacher`` calls.

The drug layer scores every drug of the vocabulary from one hidden state, so the teacher can
never name a drug outside the vocabulary (the "out-of-corpus" problem of generating text). Its
bias starts at the training log-odds of each drug, so a short run starts from `popular`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.artifacts import check_can_write
from leader.data.dataset import Dataset
from leader.data.samples import Sample, TensorBatch, multi_hot
from leader.errors import LeaderError
from leader.models.base import MedModel, register, start_from_frequencies
from leader.prompts import DEFAULT_HISTORY, PromptBuilder
from leader.train import (
    TrainConfig,
    load_trainable_state,
    prepare_run_dir,
    run_dir_for,
    train,
    trainable_state,
)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAIN_LOG = "log.jsonl"

DEFAULTS: dict[str, Any] = {
    "llm": "smollm2",
    "dtype": "fp32",
    "lora_r": 8,  # 0 = no adapter: only the drug layer trains
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "lora_targets": list(LORA_TARGETS),
    "max_length": 512,
    "history": DEFAULT_HISTORY,
    "profile": False,
    "margin_weight": 0.0,  # weight of the multi-label margin term added to BCE
    "predict_batch_size": 16,
    "train": {
        "epochs": 3,
        "max_steps": None,
        "batch_size": 8,
        "lr": 2e-4,
        "weight_decay": 0.0,
        "grad_accum": 1,
        "eval_every": None,
        "patience": 10,
        "seed": 42,
    },
}


# --- pooling -----------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token; right and left padding alike ([B] long)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


# --- the module --------------------------------------------------------------------------------


class TeacherModule(nn.Module):
    """Backbone (its final norm included, LM head dropped) -> last real token -> drug logits."""

    def __init__(self, backbone: nn.Module, hidden_size: int, n_drugs: int):
        super().__init__()
        self.backbone = backbone
        self.drug_layer = nn.Linear(hidden_size, n_drugs)  # fp32 even on a bf16 backbone

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(drug logits [B, |drugs|], pooled hidden state [B, H])."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)].float()
        return self.drug_layer(pooled), pooled


def build_module(llm: Any, n_drugs: int, config: dict[str, Any]) -> TeacherModule:
    """Strip the LM head, add LoRA adapters, add the drug layer."""
    backbone = llm.model.base_model  # e.g. LlamaModel: embeddings, layers, final norm
    for p in backbone.parameters():
        p.requires_grad_(False)
    if config["lora_r"] > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=int(config["lora_r"]),
            lora_alpha=int(config["lora_alpha"]),
            lora_dropout=float(config["lora_dropout"]),
            target_modules=list(config["lora_targets"]),
            bias="none",
        )
        try:
            with warnings.catch_warnings():  # peft calls a deprecated transformers alias
                warnings.simplefilter("ignore", FutureWarning)
                backbone = get_peft_model(backbone, lora)
        except ValueError as e:
            raise LeaderError(
                f"--llm {config['llm']}: LoRA targets {config['lora_targets']} not found in the "
                f"model ({str(e).splitlines()[0]})"
            ) from None
    return TeacherModule(backbone, llm.hidden_size, n_drugs)


# --- the training task -------------------------------------------------------------------------


@dataclass
class PromptBatch(TensorBatch):
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor


class TeacherTask:
    """What the shared training loop needs: prompts -> token batches -> BCE (+ margin)."""

    def __init__(self, module: TeacherModule, builder: PromptBuilder, tokenizer, drugs, margin):
        self.module = module
        self.builder = builder
        self.tokenizer = tokenizer
        self.drugs = drugs
        self.margin_weight = float(margin)
        self.prompts: dict[str, str] = {}  # sample id -> prompt, built once per run
        self.shortened: set[str] = set()

    def prompt(self, sample: Sample) -> str:
        text = self.prompts.get(sample.sample_id)
        if text is None:
            p = self.builder.build(sample)
            text = self.prompts[sample.sample_id] = p.text
            if p.shortened:
                self.shortened.add(sample.sample_id)
        return text

    def collate(self, samples: Sequence[Sample]) -> PromptBatch:
        enc = self.tokenizer(
            [self.prompt(s) for s in samples], padding=True, return_tensors="pt"
        )
        target = multi_hot([s.target for s in samples], self.drugs)
        return PromptBatch(enc["input_ids"], enc["attention_mask"], target)

    def loss(self, module: nn.Module, batch: PromptBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, _ = module(batch.input_ids, batch.attention_mask)
        bce = F.binary_cross_entropy_with_logits(logits, batch.target)
        if not self.margin_weight:
            return bce, {"bce": float(bce.detach())}
        margin = F.multilabel_margin_loss(logits, margin_targets(batch.target))
        total = bce + self.margin_weight * margin
        return total, {"bce": float(bce.detach()), "margin": float(margin.detach())}

    def predict(self, module: nn.Module, batch: PromptBatch) -> torch.Tensor:
        logits, _ = module(batch.input_ids, batch.attention_mask)
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


def merge_config(config: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**DEFAULTS, **(config or {})}
    merged["train"] = {**DEFAULTS["train"], **(config or {}).get("train", {})}
    return merged


@register
class Teacher(MedModel):
    """The LEADER teacher behind the common model interface (``leader.bundle`` loads it)."""

    name = "teacher"

    def __init__(self, schema, config: dict[str, Any] | None = None):
        super().__init__(schema, merge_config(config))
        self.module: TeacherModule | None = None
        self.run_dir: Path | None = None

    def build(self) -> None:
        from leader.llm import normalize_spec, resolve_llm

        self.config["llm"] = normalize_spec(self.config["llm"])
        llm = resolve_llm(self.config["llm"], self.config["dtype"])
        max_length = int(self.config["max_length"])
        if not 16 <= max_length <= llm.max_positions:
            raise LeaderError(
                f"--max-length {max_length}: the model {self.config['llm']} takes 16 to "
                f"{llm.max_positions} tokens"
            )
        self.tokenizer = llm.tokenizer
        self.config["hidden_size"] = llm.hidden_size
        with torch.random.fork_rng(devices=[]):  # the same start for every run and replica
            torch.manual_seed(int(self.config["train"]["seed"]))
            self.module = build_module(llm, len(self.schema.drugs), self.config)
        self.module.drug_layer.to(torch.float32)
        self.module.to(_device())

    def prompt_builder(self) -> PromptBuilder:
        return PromptBuilder(
            self.schema,
            history=int(self.config["history"]),
            profile=bool(self.config["profile"]),
            max_length=int(self.config["max_length"]),
            tokenizer=self.tokenizer,
        )

    def task(self) -> TeacherTask:
        if self.module is None:
            self.build()
        return TeacherTask(
            self.module,
            self.prompt_builder(),
            self.tokenizer,
            self.schema.drugs,
            self.config["margin_weight"],
        )

    def fit(
        self,
        data: Dataset,
        run_dir: Path | None = None,
        on_step: Callable[[int], None] | None = None,
        progress: bool = True,
    ) -> Teacher:

        task = self.task()
        start_from_frequencies(self.module.drug_layer.bias, data)  # a resumed run overwrites it
        cfg = TrainConfig(**self.config["train"], progress=progress)
        result = train(task, data.samples("train"), data.samples("val"), cfg, run_dir, on_step)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.result = {k: v for k, v in asdict(result).items() if k != "history"}
        self.result["prompts_shortened"] = len(task.shortened)
        self.result["prompts_built"] = len(task.prompts)
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        from leader.train import predict_in_batches

        if not samples:
            return np.zeros((0, len(self.schema.drugs)), dtype=np.float32)
        return predict_in_batches(self.task(), samples, int(self.config["predict_batch_size"]))

    @torch.no_grad()
    def encode(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled hidden states [N, H], drug logits [N, |drugs|]) in fp32, on the CPU."""
        task = self.task()
        self.module.eval()
        device = next(self.module.parameters()).device
        batch = task.collate(samples).to(device)
        logits, pooled = self.module(batch.input_ids, batch.attention_mask)
        return pooled.float().cpu(), logits.float().cpu()

    # state: only what training changed (LoRA adapter + drug layer); the backbone is rebuilt
    def state_dict(self) -> dict[str, torch.Tensor]:

        return trainable_state(self.module) if self.module is not None else {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:

        expected = set(self.state_dict())
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))[:3]
            raise LeaderError(
                f"teacher weights do not fit the backbone {self.config['llm']} with this LoRA "
                f"config (e.g. missing {missing})"
            )
        load_trainable_state(self.module, tensors)
        self.module.eval()

    def save(self, directory: Path) -> None:
        super().save(directory)  # model.json (config incl. the llm spec) + weights.safetensors
        if self.run_dir is not None and (self.run_dir / TRAIN_LOG).is_file():
            shutil.copy(self.run_dir / TRAIN_LOG, directory / TRAIN_LOG)


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local)
    return torch.device("cpu")


# --- `leader train-teacher` --------------------------------------------------------------------


def train_teacher(
    data_dir: str | Path,
    out: str | Path,
    config: dict[str, Any] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    threshold: float | None = None,
    max_drugs: int | None = None,
) -> dict[str, Any]:
    """Train a teacher on DATA_DIR and write TEACHER_DIR (a model bundle); resume if killed.

    Rerunning the same command after a kill continues from the last checkpoint; a leftover
    checkpoint from other options is refused unless ``force`` (which starts again).
    """
    from leader.bundle import save_bundle
    from leader.evaluation import check_threshold, decide_threshold, split_metrics

    out = Path(out)
    check_can_write(out, force)
    data = Dataset.load(data_dir)
    check_threshold(threshold, max_drugs)
    model = Teacher(data.schema, config)
    model.build()  # a bad --llm or --max-length fails here, before anything is written
    run_dir = run_dir_for(out)
    is_main = int(os.environ.get("RANK", 0)) == 0
    identity = {"config": model.config, "data_hash": data.data_hash}
    if is_main:
        prepare_run_dir(run_dir, identity, force)
    model.fit(data, run_dir, on_step=on_step, progress=progress)
    probs = {s: model.predict_proba(data.samples(s)) for s in ("val", "test") if data.samples(s)}
    rule = decide_threshold(model, data, threshold, max_drugs, val_probs=probs.get("val"))
    metrics = split_metrics(model, data, rule["threshold"], max_drugs, probs=probs)
    summary: dict[str, Any] = {"out": str(out), "train": model.result, "rule": rule, **metrics}
    if not is_main:
        return summary
    save_bundle(
        model,
        out,
        metrics=metrics,
        force=force,
        extra={"llm": model.config["llm"], "training": model.result},
        rule=rule,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    return summary
