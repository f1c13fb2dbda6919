"""Load testing ``dlforge serve``: a bounded asynchronous client and a server in a subprocess.

``load(url, body, concurrency=32, requests=2000, duration_s=20)`` runs a closed loop of
``concurrency`` clients, each sending its next request when the last one is answered, until
``requests`` were sent or ``duration_s`` passed (after one untimed request per client that
opens its keep-alive connection); it reports requests per second, latency
percentiles of the answered requests and a count of each status code. The client is aiohttp
on one event loop, so on a small machine it shares the CPU with the server it measures: the
figures are for both on one host, as the benchmark says.

``ServerProcess(target, *cli_args)`` starts ``dlforge serve`` on a free local port and stops it
with SIGTERM (a graceful shutdown).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


async def _load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    duration_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def connect() -> None:  # each client opens its connection before the clock runs
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
            except (aiohttp.ClientError, TimeoutError):
                pass

        await asyncio.gather(*(connect() for _ in range(concurrency)))
        start = time.perf_counter()
        deadline = start + duration_s

        async def client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        statuses[r.status] += 1
                        if r.status == 200:
                            latencies.append(time.perf_counter() - t)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    return {
        "concurrency": concurrency,
        "sent": sent,
        "ok": statuses.get(200, 0),
        "seconds": elapsed,
        "rps": statuses.get(200, 0) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
    }


def load(
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    concurrency: int = 8,
    requests: int = 1000,
    duration_s: float = 10.0,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Closed-loop load on ``url`` (POST ``body``); see the module docstring."""
    headers = headers or {"content-type": "application/json"}
    return asyncio.run(_load(url, body, headers, concurrency, requests, duration_s, timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``with ServerProcess(run_dir, "--set", "serve.max_wait_ms=2") as server: server.url``"""

    def __init__(self, target: str | Path, *args: str, startup_s: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "dlforge", "serve", str(target),
                     "--port", str(self.port), *args]  # fmt: skip
        self.startup_s = startup_s
        self.proc: subprocess.Popen[str] | None = None
        self.log: Any = None
        self._printed = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per readiness poll
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its output goes to a file, never a pipe nobody reads: a full pipe would block the
        # server's event loop on its next log line.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited at start: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start within {self.startup_s} s")

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM (a graceful shutdown); the exit status and everything it printed."""
        assert self.proc is not None
        if self.log.closed:  # stopped before
            return self.proc.returncode, self._printed
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._printed = self.output()
        self.log.close()
        return self.proc.returncode, self._printed

    def output(self) -> str:
        """Everything the server printed so far."""
        if self.log.closed:
            return self._printed
        self.log.flush()
        self.log.seek(0)
        text: str = self.log.read()
        return text

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serving_modes(max_batch_size: int, max_wait_ms: float) -> dict[str, list[str]]:
    """Batch-1 serving against dynamic batching, as ``dlforge serve`` arguments."""
    return {
        "batch-1": ["--set", "serve.max_batch_size=1"],
        f"dynamic ({max_wait_ms:g} ms)": ["--set", f"serve.max_batch_size={max_batch_size}",
                                          "--set", f"serve.max_wait_ms={max_wait_ms}"],
    }  # fmt: skip


def compare_modes(
    target: str | Path,
    modes: dict[str, list[str]],
    body: bytes,
    headers: dict[str, str] | None = None,
    concurrency: tuple[int, ...] | list[int] = (1, 8, 32),
    requests: int = 1000,
    duration_s: float = 10.0,
    common: tuple[str, ...] | list[str] = (),
) -> list[dict[str, Any]]:
    """Each mode served in turn (a fresh server each) under load at each concurrency; rows
    carry ``rps_x``, the throughput relative to the first mode at the same concurrency."""
    rows = []
    for mode, args in modes.items():
        with ServerProcess(target, *common, *args) as server:
            url = f"{server.url}/v1/predict"
            load(url, body, headers, concurrency=max(concurrency), requests=200, duration_s=5)
            for c in concurrency:
                rows.append({"mode": mode, **load(url, body, headers, c, requests, duration_s)})
    first = next(iter(modes))
    base = {r["concurrency"]: r["rps"] for r in rows if r["mode"] == first}
    for r in rows:
        r["rps_x"] = r["rps"] / base[r["concurrency"]] if base.get(r["concurrency"]) else None
    return rows
