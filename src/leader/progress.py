"""A plain progress bar for long loops outside training (prompts, layer caches), or nothing.

WHY: building a full cohort's prompts or a layer cache takes minutes on real data; the same bar
serves every layer that needs one, from data code up (the training loop has its own, with loss
and throughput)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def counter(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar counting ``total`` items (or nothing); yields ``advance(n)``."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
