"""A Python client for ``dlforge serve``, with the same calls synchronous and asynchronous.

    client = Client("http://127.0.0.1:8000")
    client.predict(x)                    # {"classes": [...], "probabilities": [[...]], ...}
    job = client.submit(big_x); client.wait(job)
    await client.apredict(x)             # the same, from asyncio code

Arrays travel as ``.npy`` bodies (exact float32, no JSON rounding). A 503/429 answer is retried
after the server's Retry-After up to ``retries`` times; every other error raises
``ServerError`` with the server's message.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import numpy as np

from dlforge.config import DlforgeError


class ServerError(DlforgeError, RuntimeError):
    """The server answered with an error; ``status`` is its HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _npy(x: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _check(response: Any) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise ServerError(response.status_code, message)
    body: dict[str, Any] = response.json()
    return body


def _retry_after(response: Any) -> float:
    try:
        return float(response.headers.get("retry-after", "1"))
    except ValueError:
        return 1.0


def _finished(
    state: dict[str, Any], job_id: str, deadline: float, timeout: float
) -> dict[str, Any] | None:
    """A job's result once done (None while pending); ServerError if it failed, TimeoutError
    past the deadline."""
    if state["status"] == "done":
        result: dict[str, Any] = state["result"]
        return result
    if state["status"] == "failed":
        raise ServerError(500, state.get("error", "the job failed"))
    if time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} not done after {timeout} s")
    return None


NPY = {"content-type": "application/x-npy"}
BUSY = (429, 503)


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0, retries: int = 3):
        import httpx

        self.url = url.rstrip("/")
        self.retries = retries
        self._sync = httpx.Client(base_url=self.url, timeout=timeout)
        self._timeout = timeout
        self._async: Any = None

    # -- synchronous
    def _post(self, path: str, body: bytes) -> Any:
        for attempt in range(self.retries + 1):
            r = self._sync.post(path, content=body, headers=NPY)
            if r.status_code not in BUSY or attempt == self.retries:
                return r
            time.sleep(_retry_after(r))
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        return _check(self._sync.get("/healthz"))

    def model(self) -> dict[str, Any]:
        return _check(self._sync.get("/v1/model"))

    def predict(self, x: Any) -> dict[str, Any]:
        """Classes and probabilities for ``x`` (one sample or a batch, raw inputs)."""
        return _check(self._post("/v1/predict", _npy(x)))

    def submit(self, x: Any) -> str:
        """Start an asynchronous job; its id."""
        return str(_check(self._post("/v1/jobs", _npy(x)))["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's state: ``{"status": "pending" | "done" | "failed", "result": ...}``."""
        return _check(self._sync.get(f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float = 60.0, poll_s: float = 0.05) -> dict[str, Any]:
        """The job's result once it is done; ServerError if it failed, TimeoutError if slow."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id)
            result = _finished(state, job_id, deadline, timeout)
            if result is not None:
                return result
            time.sleep(poll_s)

    def close(self) -> None:
        self._sync.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asynchronous (an httpx.AsyncClient opened on first use, in the caller's loop)
    def _aclient(self) -> Any:
        import httpx

        if self._async is None:
            self._async = httpx.AsyncClient(base_url=self.url, timeout=self._timeout)
        return self._async

    async def _apost(self, path: str, body: bytes) -> Any:
        for attempt in range(self.retries + 1):
            r = await self._aclient().post(path, content=body, headers=NPY)
            if r.status_code not in BUSY or attempt == self.retries:
                return r
            await asyncio.sleep(_retry_after(r))
        raise AssertionError("unreachable")

    async def apredict(self, x: Any) -> dict[str, Any]:
        return _check(await self._apost("/v1/predict", _npy(x)))

    async def asubmit(self, x: Any) -> str:
        return str(_check(await self._apost("/v1/jobs", _npy(x)))["id"])

    async def ajob(self, job_id: str) -> dict[str, Any]:
        return _check(await self._aclient().get(f"/v1/jobs/{job_id}"))

    async def await_job(
        self, job_id: str, timeout: float = 60.0, poll_s: float = 0.05
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.ajob(job_id)
            result = _finished(state, job_id, deadline, timeout)
            if result is not None:
                return result
            await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
