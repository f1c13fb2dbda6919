"""The dynamic batcher on its own (in one event loop, a numpy model): joining, order, limits,
failures, cancellation and shutdown."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from dlforge.deploy.batching import BatcherClosed, DynamicBatcher, QueueFull


class Model:
    """Doubles its input; records each batch's rows; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("the engine failed")
        time.sleep(self.delay)
        return x * 2


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_join_and_each_gets_its_own_rows() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        b = DynamicBatcher(model, max_batch_size=16, max_wait_ms=50, max_queue=64)
        b.start()
        xs = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(10)]
        out = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.close()
        for x, y in zip(xs, out):
            np.testing.assert_array_equal(y, x * 2)
        return out

    run(main())
    assert sum(model.batches) == 19 and len(model.batches) <= 2  # 10 requests, 19 rows


def test_batches_respect_max_batch_size_and_max_wait() -> None:
    model = Model()

    async def main() -> float:
        b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=100, max_queue=64)
        b.start()
        await asyncio.gather(*(b.submit(np.ones((1, 2), np.float32)) for _ in range(10)))
        start = time.perf_counter()
        await b.submit(np.ones((1, 2), np.float32))  # alone: waits max_wait for company
        waited = time.perf_counter() - start
        await b.close()
        return waited

    waited = run(main())
    assert max(model.batches[:-1]) <= 4 and model.batches[-1] == 1
    assert 0.09 <= waited < 0.5


def test_a_full_queue_refuses_at_once() -> None:
    model = Model(delay=0.2)

    async def main() -> list[object]:
        b = DynamicBatcher(model, max_batch_size=1, max_wait_ms=0, max_queue=2)
        b.start()
        tasks = [asyncio.ensure_future(b.submit(np.ones((1, 2), np.float32))) for _ in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        return results

    results = run(main())
    assert sum(isinstance(r, QueueFull) for r in results) >= 2
    assert sum(isinstance(r, np.ndarray) for r in results) >= 2


def test_a_failing_batch_fails_its_callers_only_and_the_loop_goes_on() -> None:
    model = Model(fail_on=1)

    async def main() -> None:
        b = DynamicBatcher(model, max_batch_size=8, max_wait_ms=20, max_queue=64)
        b.start()
        first = await asyncio.gather(
            *(b.submit(np.ones((1, 2), np.float32)) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in first)
        ok = await b.submit(np.ones((1, 2), np.float32))  # the next batch runs
        np.testing.assert_array_equal(ok, 2 * np.ones((1, 2)))
        assert b.alive
        await b.close()

    run(main())


def test_unlike_shapes_are_never_concatenated() -> None:
    model = Model()

    async def main() -> None:
        b = DynamicBatcher(model, max_batch_size=16, max_wait_ms=30, max_queue=64)
        b.start()
        a, c = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
        out = await asyncio.gather(b.submit(a), b.submit(c), b.submit(a))
        assert [o.shape for o in out] == [(1, 3), (1, 5), (1, 3)]
        await b.close()

    run(main())
    assert sorted(model.batches) == [1, 2]


def test_a_caller_that_goes_away_is_skipped() -> None:
    model = Model()

    async def main() -> None:
        b = DynamicBatcher(model, max_batch_size=8, max_wait_ms=100, max_queue=64)
        b.start()
        gone = asyncio.ensure_future(b.submit(np.ones((3, 2), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = await b.submit(np.ones((1, 2), np.float32))
        assert kept.shape == (1, 2)
        await b.close()

    run(main())
    assert model.batches == [1]  # the cancelled rows were never computed


def test_close_answers_what_is_queued_then_refuses() -> None:
    model = Model(delay=0.05)

    async def main() -> None:
        b = DynamicBatcher(model, max_batch_size=2, max_wait_ms=0, max_queue=64)
        b.start()
        pending = [asyncio.ensure_future(b.submit(np.ones((1, 2), np.float32))) for _ in range(6)]
        await asyncio.sleep(0)
        await b.close()
        assert all(p.done() and not p.exception() for p in pending)
        with pytest.raises(BatcherClosed):
            await b.submit(np.ones((1, 2), np.float32))
        assert not b.alive

    run(main())
