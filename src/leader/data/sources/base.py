"""What a source module declares, so nothing outside it branches on the source's name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from leader.data.sources.frames import RawTables
from leader.errors import LeaderError

Reader = Callable[[Path, Mapping[str, str]], RawTables]


@dataclass(frozen=True)
class Source:
    """One registered raw-data format.

    ``read(root, options)`` turns the files under ``root`` into canonical frames; ``options`` are
    the source's own settings (``leader prepare --source-option KEY=VALUE``), checked by the
    source against ``option_help``. ``prepare_defaults`` override :class:`PrepareConfig`
    defaults; ``distill_weights`` are LEADER's reference (α, β) for this source, None where the
    paper gives none; ``synth`` says whether ``leader synth --format NAME`` writes it.
    """

    name: str
    title: str
    tables: str  # the tables read, for help texts and docs
    profile_fields: tuple[str, ...]  # the default profile (a source may derive it from options)
    read: Reader
    prepare_defaults: Mapping[str, object] = field(default_factory=dict)
    distill_weights: tuple[float, float] | None = None
    option_help: Mapping[str, str] = field(default_factory=dict)
    synth: bool = False


def check_options(source: str, options: Mapping[str, str], known: Mapping[str, str]) -> None:
    """Refuse options the source does not know (a typo would otherwise be silently ignored)."""
    for key in options:
        if key not in known:
            expected = ", ".join(known) if known else "none"
            raise LeaderError(f"source option {key!r} of {source}: expected one of: {expected}")
