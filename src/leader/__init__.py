"""leader: medication recommendation distilled from a large language model (LEADER)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from leader.recommend import Recommender


def load(model_dir: str | Path) -> Recommender:
    """Load a MODEL_DIR bundle: ``leader.load(d).recommend(patient)``."""
    from leader.recommend import Recommender  # deferred: `import leader` stays light

    return Recommender.load(model_dir)
