import asyncio

import numpy as np
import pytest

from leader.serve.batching import MicroBatcher


def test_one_call_for_requests_waiting_together_and_rows_in_order():
    seen = []

    def predict(samples):
        seen.append(list(samples))
        return np.array([[float(s)] for s in samples])

    batcher = MicroBatcher(predict)

    async def main():
        singles = [batcher.probabilities([i]) for i in range(3)]
        return await asyncio.gather(*singles, batcher.probabilities([3, 4]))

    rows = asyncio.run(main())
    assert [r[:, 0].tolist() for r in rows] == [[0], [1], [2], [3, 4]]  # each request its rows
    assert seen == [[0, 1, 2, 3, 4]] and batcher.calls == 1


def test_max_batch_splits_and_errors_reach_every_waiter():
    batcher = MicroBatcher(lambda samples: np.zeros((len(samples), 1)), max_batch=2)

    async def main():
        return await asyncio.gather(*(batcher.probabilities([i]) for i in range(5)))

    assert len(asyncio.run(main())) == 5 and batcher.calls == 3

    def broken(samples):
        raise RuntimeError("model failed")

    failing = MicroBatcher(broken)

    async def fail():
        return await asyncio.gather(
            *(failing.probabilities([i]) for i in range(3)), return_exceptions=True
        )

    errors = asyncio.run(fail())
    assert all(isinstance(e, RuntimeError) for e in errors)
    with pytest.raises(RuntimeError):
        asyncio.run(failing.probabilities([0]))
