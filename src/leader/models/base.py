"""The interface every model implements, scikit-learn style, and the registry of model names.

``evaluate``, ``compare``, ``recommend`` and ``serve`` only ever call ``predict_proba``; the
bundle code only ever calls ``save``/``load``. A model knows its data through a
:class:`~leader.data.dataset.Schema` (vocabularies, profile values, DDI pairs).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leader.artifacts import read_json, write_json
from leader.data.dataset import Dataset, Schema
from leader.data.samples import Sample
from leader.errors import LeaderError

WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "model.json"

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
_REGISTRY: dict[str, type[MedModel]] = {}


def register(cls: type[MedModel]) -> type[MedModel]:
    _REGISTRY[cls.name] = cls
    return cls


def model_class(name: str) -> type[MedModel]:
    if name not in _REGISTRY and name in MODEL_MODULES:
        importlib.import_module(MODEL_MODULES[name])
    if name not in _REGISTRY:
        known = ", ".join(sorted(MODEL_MODULES))
        raise LeaderError(f"unknown model {name!r}; expected one of: {known}")
    return _REGISTRY[name]


def start_from_frequencies(bias: torch.Tensor, data: Dataset) -> None:
    """Set a drug-output bias to each drug's training log-odds.

    Training then starts from the `popular` ranking instead of p = 0.5 for every drug, so a
    short run (few epochs, few LLM steps) already gives a sensible model.
    """
    from leader.data.samples import multi_hot

    freq = multi_hot([s.target for s in data.samples("train")], data.drugs).mean(0)
    freq = freq.clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        bias.copy_(torch.log(freq / (1 - freq)).to(bias.dtype))


class MedModel(ABC):
    """A medication recommender: ``fit`` on a Dataset, ``predict_proba`` on samples.

    ``predict_proba`` returns an array [len(samples), len(schema.drugs)] of probabilities in
    the drug vocabulary's order. Subclasses hold their hyper-parameters in ``self.config`` (a
    JSON-able dict) and their learned state in tensors (``state_dict``), which is all ``save``
    writes; override ``save``/``load`` only when a model needs more (the teacher's adapter).
    """

    name: ClassVar[str]

    def __init__(self, schema: Schema, config: dict[str, Any] | None = None):
        self.schema = schema
        self.config: dict[str, Any] = dict(config or {})

    @abstractmethod
    def fit(self, data: Dataset, run_dir: Path | None = None) -> MedModel: ...

    @abstractmethod
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray: ...

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
        write_json(directory / MODEL_CONFIG, {"name": self.name, "config": self.config})
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS))

    @classmethod
    def load(cls, directory: Path, schema: Schema) -> MedModel:
        cfg = read_json(directory / MODEL_CONFIG)
        model = cls(schema, cfg.get("config", {}))
        model.build()
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        return model

    def build(self) -> None:
        """Create the modules from ``config`` and ``schema`` (before loading a state)."""
        return None
