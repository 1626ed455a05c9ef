"""Micro-batching: single-patient requests that arrive together share one model call.

Scoring one patient is mostly fixed per-call cost (the student's forward pass is ~2 ms for one
patient, while it scores thousands of visits per second in a batch). Each request parses and
validates its own patient, then waits here; the batch is flushed on the next turn of the event
loop, so a lone request waits for nothing and concurrent ones are scored together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from leader.data.samples import Sample


class MicroBatcher:
    def __init__(self, predict: Callable[[Sequence[Sample]], np.ndarray], max_batch: int = 64):
        self.predict = predict
        self.max_batch = max_batch  # samples; a larger request is still scored in one call
        self.pending: list[tuple[list[Sample], asyncio.Future]] = []
        self.queued = 0
        self.calls = 0  # model calls made (for tests and metrics)

    async def probabilities(self, samples: Sequence[Sample]) -> np.ndarray:
        """The probability rows of ``samples`` (one request), scored together with the
        samples of concurrent requests."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((list(samples), future))
        self.queued += len(samples)
        if len(self.pending) == 1:
            loop.call_soon(self.flush)
        elif self.queued >= self.max_batch:
            self.flush()
        return await future

    def flush(self) -> None:
        batch, self.pending, self.queued = self.pending, [], 0
        if not batch:
            return
        self.calls += 1
        try:
            probs = self.predict([s for samples, _ in batch for s in samples])
        except Exception as e:  # every waiting request gets the error, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for samples, future in batch:
            rows = probs[start : start + len(samples)]
            start += len(samples)
            if not future.done():
                future.set_result(rows)
