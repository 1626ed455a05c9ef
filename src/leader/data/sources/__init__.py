"""The source registry: one module per raw-data format, looked up by name.

Adding a source is one module that defines ``SOURCE`` (a :class:`Source`) plus its tests, and
one line in ``MODULES`` below; docs/data.md says how. Everything else (``cohort``, the CLI, and
the distillation and synthetic-data code) asks :func:`get` instead of branching on names.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from leader.errors import LeaderError

if TYPE_CHECKING:  # the modules load on first use: `leader --help` stays quick
    from leader.data.sources.base import Source
    from leader.data.sources.frames import RawTables

MODULES = ("mimic3", "mimic4", "omop", "meds")


def names() -> tuple[str, ...]:
    """The registered source names, in registration order."""
    return MODULES


def get(name: str) -> Source:
    """The registered source ``name`` (a LeaderError listing the names otherwise)."""
    if name not in MODULES:
        raise LeaderError(f"source {name!r}: expected one of {', '.join(MODULES)}")
    return import_module(f"leader.data.sources.{name}").SOURCE


def distill_weights(name: str) -> tuple[float, float] | None:
    """LEADER's reference (α, β) for data of source ``name``; None if unknown or not given."""
    return get(name).distill_weights if name in MODULES else None


def synth_formats() -> tuple[str, ...]:
    """The sources `leader synth --format` can write."""
    return tuple(n for n in MODULES if get(n).synth)


def read(name: str, root, options: dict[str, str] | None = None) -> RawTables:
    """Read ``root`` as source ``name`` into canonical lazy frames."""
    return get(name).read(Path(root), options or {})


__all__ = ["distill_weights", "get", "names", "read", "synth_formats"]
