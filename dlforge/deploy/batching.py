"""Dynamic batching: concurrent requests joined into one model call.

A request waits at most ``max_wait_ms`` (from its arrival) for others to join it; a batch holds
at most ``max_batch_size`` rows (a larger request runs on its own). The model runs on one
worker thread, so the event loop keeps accepting, queueing and refusing while it computes, and
requests that arrive meanwhile form the next batch at once. The queue is bounded: ``submit``
raises ``QueueFull`` instead of letting waiting requests pile up in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` requests already."""


class BatcherClosed(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class _Request:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[int, float], None]  # (rows in the batch, seconds it ran)


class DynamicBatcher:
    """Joins ``submit``ted arrays (each (n, ...)) along axis 0 and runs ``model`` on them."""

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1e3
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._running = 0  # requests inside the batch the model is computing
        # One thread: the engines use their own intra-op pools, and OpenVINO's infer request is
        # not shared between threads.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dlforge-infer")

    @property
    def depth(self) -> int:
        """Requests waiting, plus those in the batch being computed."""
        return len(self._queue) + self._running

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x``; raises QueueFull at once when the queue is full."""
        if self._closing or self._arrived is None:
            raise BatcherClosed("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue)")
        req = _Request(x, asyncio.get_running_loop().create_future())
        self._queue.append(req)
        self._arrived.set()
        return await req.future

    async def close(self) -> None:
        """Take no new requests, answer every queued one, then stop the worker thread."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        assert self._arrived is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = await self._gather()
            await self._run(batch)

    async def _gather(self) -> list[_Request]:
        """The oldest request and those that join it before its wait ends or the batch fills."""
        assert self._arrived is not None
        batch = [self._queue.popleft()]
        rows = len(batch[0].x)
        deadline = batch[0].arrived + self.max_wait
        while rows < self.max_batch_size:
            if self._queue:
                if rows + len(self._queue[0].x) > self.max_batch_size:
                    break
                req = self._queue.popleft()
                batch.append(req)
                rows += len(req.x)
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self._closing:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.cancelled()]  # a caller that went away
        if not live:
            return
        self._running = len(live)
        x = live[0].x if len(live) == 1 else np.concatenate([r.x for r in live])
        start = time.perf_counter()
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self.model, x)
        except Exception as exc:  # the model failed on this batch: each caller gets the error
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        finally:
            self._running = 0
        if self.on_batch is not None:
            self.on_batch(len(x), time.perf_counter() - start)
        at = 0
        for r in live:  # each caller's rows, in the order they were joined
            n = len(r.x)
            if not r.future.done():
                r.future.set_result(out[at : at + n])
            at += n
