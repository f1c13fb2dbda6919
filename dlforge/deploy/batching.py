"""Dynamic batching: concurrent requests joined into one model call.

A request waits at most ``max_wait_ms`` (from its arrival) for others to join it; a batch holds
at most ``max_batch_size`` rows (a larger request runs on its own). The model runs on one
worker thread, so the event loop keeps accepting, queueing and refusing while it computes, and
requests that arrive meanwhile form the next batch at once. The queue is bounded: ``submit``
raises ``QueueFull`` instead of letting waiting requests pile up in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
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


@dataclass(eq=False)  # compared by identity (deque.remove), never by their arrays
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
    def waiting(self) -> int:
        """Requests in the queue, not yet in a batch."""
        return len(self._queue)

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

    @property
    def alive(self) -> bool:
        """False once the worker loop has ended (it never should before ``close``)."""
        return self._task is not None and not self._task.done()

    async def _loop(self) -> None:
        assert self._arrived is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch: list[_Request] = []
            try:
                batch = await self._gather()
                await self._run(batch)
            except Exception as exc:  # never let one batch end the loop: fail its callers only
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)

    async def _gather(self) -> list[_Request]:
        """The oldest request and those that join it before its wait ends or the batch fills;
        only requests of the same sample shape join (a file with dynamic sizes may get others,
        which wait for a batch of their own)."""
        assert self._arrived is not None
        first = self._queue.popleft()
        batch, rows, shape = [first], len(first.x), first.x.shape[1:]
        deadline = first.arrived + self.max_wait
        while rows < self.max_batch_size:
            joinable = next((r for r in self._queue if r.x.shape[1:] == shape), None)
            if joinable is not None:
                if rows + len(joinable.x) > self.max_batch_size:
                    break
                self._queue.remove(joinable)
                batch.append(joinable)
                rows += len(joinable.x)
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
        start = time.perf_counter()
        try:
            x = live[0].x if len(live) == 1 else np.concatenate([r.x for r in live])
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self.model, x)
            if len(out) != len(x):
                raise RuntimeError(f"the model answered {len(out)} rows for {len(x)}")
        finally:
            self._running = 0
        if self.on_batch is not None:
            with contextlib.suppress(Exception):  # metrics must never fail a batch
                self.on_batch(len(x), time.perf_counter() - start)
        at = 0
        for r in live:  # each caller's rows, in the order they were joined
            n = len(r.x)
            if not r.future.done():
                r.future.set_result(out[at : at + n])
            at += n
