"""The interface every model implements, scikit-learn style, and the registry of model names.

``evaluate``, ``compare``, ``recommend`` and ``serve`` only ever call ``predict_proba``; the
bundle code only ever calls ``save``/``load``. A model knows its data through a
:class:`~leader.data.dataset.Schema` (vocabularies, profile values, DDI pairs).
"""

from __future__ import annotations

import importlib
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors.torch import load_file

from leader.artifacts import read_json, save_tensors, write_json
from leader.configs import Config
from leader.data.dataset import Dataset, Schema
from leader.data.samples import Sample, multi_hot
from leader.errors import LeaderError
from leader.train import LOG, FitContext, Task, TrainConfig, TrainResult, train

WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "model.json"
TRAIN_LOG = "train_log.jsonl"

# name -> module that defines it; imported on demand so a student bundle never imports transformers
MODEL_MODULES: dict[str, str] = {
    "student": "leader.models.student",
    "teacher": "leader.models.teacher",
    "popular": "leader.models.baselines.popular",
    "repeat-last": "leader.models.baselines.popular",
    "logreg": "leader.models.baselines.logreg",
    "retain": "leader.models.baselines.retain",
    "gamenet": "leader.models.baselines.gamenet",
    "safedrug": "leader.models.baselines.safedrug",
    "oracle": "leader.models.baselines.oracle",
}
MODEL_NAMES = tuple(MODEL_MODULES)
BASELINES = tuple(n for n in MODEL_NAMES if n not in ("student", "teacher"))
_REGISTRY: dict[str, type[MedModel]] = {}


def register(cls: type[MedModel]) -> type[MedModel]:
    _REGISTRY[cls.name] = cls
    return cls


def model_class(name: str) -> type[MedModel]:
    if name not in _REGISTRY and name in MODEL_MODULES:
        importlib.import_module(MODEL_MODULES[name])
    if name not in _REGISTRY:
        raise LeaderError(f"unknown model {name!r}; expected one of: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name]


def start_from_frequencies(bias: torch.Tensor, data: Dataset) -> None:
    """Set a drug-output bias to each drug's training log-odds.

    Training then starts from the `popular` ranking instead of p = 0.5 for every drug, so a
    short run (few epochs, few LLM steps) already gives a sensible model.
    """
    freq = multi_hot([s.target for s in data.samples("train")], data.drugs).mean(0)
    freq = freq.clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        bias.copy_(torch.log(freq / (1 - freq)).to(bias.dtype))


@dataclass
class NoConfig(Config):
    """For models without settings (popular, repeat-last, oracle)."""


class MedModel(ABC):
    """A medication recommender: ``fit`` on a Dataset, ``predict_proba`` on samples.

    ``predict_proba`` returns an array [len(samples), len(schema.drugs)] of probabilities in
    the drug vocabulary's order. A model holds its settings in ``self.config`` (an instance of
    its ``config_class``, saved as-is in ``model.json``) and its learned state in tensors
    (``state_dict``), which is all ``save`` writes; override ``save``/``load`` only when a model
    needs more (the oracle's index, SafeDrug's molecules).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[Config]] = NoConfig
    uses_teacher: ClassVar[bool] = False  # True: ``fit`` reads teacher features (FitContext)

    def __init__(self, schema: Schema, config: Config | Mapping[str, Any] | None = None):
        self.schema = schema
        if isinstance(config, self.config_class):
            self.config = config
        elif isinstance(config, Config):
            raise LeaderError(
                f"{self.name}: expected a {self.config_class.__name__}, got "
                f"{type(config).__name__}"
            )
        else:
            self.config = self.config_class.from_dict(config)
        self.fit_summary: dict[str, Any] = {}  # what the last fit reports (steps, best score)
        self.train_log: Path | None = None  # copied into the bundle by ``save`` when set

    @abstractmethod
    def fit(self, data: Dataset, context: FitContext | None = None) -> Self: ...

    @abstractmethod
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray: ...

    def run_loop(
        self, task: Task, data: Dataset, context: FitContext | None,
        train_cfg: TrainConfig | None = None,
    ) -> TrainResult:
        """Train ``task`` with the shared loop on the train/val splits (with ``train_cfg``, else
        the model's own ``config.train``); remember its summary."""
        context = context or FitContext()
        if train_cfg is None:
            train_cfg = self.config.train  # a model that trains with the loop has a TrainConfig
        result = train(task, data.samples("train"), data.samples("val"), train_cfg, context)
        self.fit_summary = {
            "best_val_prauc": result.best_score,
            "best_step": result.best_step,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
        }
        log = Path(context.run_dir) / LOG if context.run_dir is not None else None
        self.train_log = log if log is not None and log.is_file() else None
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        module = getattr(self, "module", None)
        return module.state_dict() if isinstance(module, torch.nn.Module) else {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        module = getattr(self, "module", None)
        if isinstance(module, torch.nn.Module):
            module.load_state_dict(tensors)

    def num_parameters(self) -> int:
        return int(sum(t.numel() for t in self.state_dict().values()))

    def save(self, directory: Path) -> None:
        write_json(directory / MODEL_CONFIG, {"name": self.name, "config": self.config.to_dict()})
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_tensors(tensors, directory / WEIGHTS)
        if self.train_log is not None and self.train_log.is_file():
            shutil.copyfile(self.train_log, directory / TRAIN_LOG)

    @classmethod
    def read_config(cls, directory: Path) -> Config:
        raw = read_json(directory / MODEL_CONFIG)
        if not isinstance(raw, dict):
            raise LeaderError(f"{directory / MODEL_CONFIG}: expected a JSON object")
        return cls.config_class.from_dict(raw.get("config"), str(directory / MODEL_CONFIG))

    @classmethod
    def load(cls, directory: Path, schema: Schema) -> Self:
        model = cls(schema, cls.read_config(directory))
        model.build()
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        return model

    def build(self) -> None:
        """Create the modules from ``config`` and ``schema`` (before loading a state)."""
        return None
