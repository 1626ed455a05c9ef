"""`oracle`: the synthetic generator's own drug probabilities, the ceiling any model can reach.

Only for data prepared from `leader synth` tables: the DATA_DIR manifest names the raw folder,
whose ``ground_truth.parquet`` holds, per admission (``hadm_id``), the exact probability of every
drug class given what a model can observe. The bundle stores those probabilities for every visit
of the cohort (``weights.safetensors``) with a JSON index from sample id (``patient/visit``) to
row, and a fingerprint of each visit's codes, so a visit of another cohort that happens to share
an id is never given the wrong row. Visits it does not know (a patient typed into `recommend`)
get the mean training probability: an oracle cannot know an unseen patient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file

from leader.artifacts import read_json, save_tensors, write_json
from leader.data.dataset import Dataset, Schema
from leader.data.samples import Sample, sample_id
from leader.data.synth import SYNTH_MANIFEST, read_ground_truth
from leader.errors import LeaderError
from leader.models.base import MODEL_CONFIG, WEIGHTS, MedModel, register
from leader.train import FitContext

INDEX = "oracle_index.json"


def fingerprint(diagnoses: Sequence[str], procedures: Sequence[str]) -> str:
    text = "|".join(sorted(diagnoses)) + "#" + "|".join(sorted(procedures))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@register
class Oracle(MedModel):
    name = "oracle"

    def fit(self, data: Dataset, context: FitContext | None = None) -> Oracle:

        root = Path(str(data.manifest.get("root", "")))
        if not (root / SYNTH_MANIFEST).is_file():
            raise LeaderError(
                f"{data.root}: oracle needs data prepared from `leader synth` tables; its raw "
                f"folder {root} has no {SYNTH_MANIFEST} (source {data.manifest.get('source')!r})"
            )
        classes, truth = read_ground_truth(root)
        visits = data.visits.select("patient_id", "visit_index", "hadm_id", "diagnoses",
                                    "procedures", "split")
        joined = visits.join(truth.select("hadm_id", "prob"), on="hadm_id", how="left")
        missing = joined.filter(pl.col("prob").is_null()).height
        if missing:
            raise LeaderError(
                f"{root / 'ground_truth.parquet'}: {missing} visits of {data.root} have no "
                "ground truth; was the data prepared from these tables?"
            )
        cols = [classes.index(c) if c in classes else -1 for c in self.schema.drugs.codes]
        prob = np.array(joined["prob"].to_list(), dtype=np.float32)
        prob = np.where(np.array(cols) >= 0, prob[:, np.maximum(cols, 0)], 0.0)
        self.prob = torch.from_numpy(prob.astype(np.float32))
        train = (joined["split"] == "train").to_numpy()
        self.fallback = self.prob[torch.from_numpy(train)].mean(0) if train.any() else (
            self.prob.mean(0))
        self.keys = [sample_id(str(p), int(v)) for p, v in
                     zip(joined["patient_id"], joined["visit_index"], strict=True)]
        self.prints = [fingerprint(d, p) for d, p in
                       zip(joined["diagnoses"], joined["procedures"], strict=True)]
        return self

    def num_parameters(self) -> int:
        return 0  # a lookup table, nothing learned

    def save(self, directory: Path) -> None:
        write_json(directory / MODEL_CONFIG, {"name": self.name, "config": self.config.to_dict()})
        save_tensors({"prob": self.prob, "fallback": self.fallback}, directory / WEIGHTS)
        write_json(directory / INDEX, {"sample_ids": self.keys, "fingerprints": self.prints})

    @classmethod
    def load(cls, directory: Path, schema: Schema) -> Oracle:
        model = cls(schema, cls.read_config(directory))
        tensors = load_file(str(directory / WEIGHTS))
        model.prob, model.fallback = tensors["prob"], tensors["fallback"]
        index = read_json(directory / INDEX)
        model.keys, model.prints = index["sample_ids"], index["fingerprints"]
        return model

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        row = {k: i for i, k in enumerate(self.keys)}
        out = np.tile(self.fallback.numpy(), (len(samples), 1))
        prob = self.prob.numpy()
        for n, s in enumerate(samples):
            i = row.get(s.sample_id)
            if i is not None and self.prints[i] == fingerprint(s.current.diagnoses,
                                                               s.current.procedures):
                out[n] = prob[i]
        return out
