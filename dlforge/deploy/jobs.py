"""Asynchronous inference jobs: ``POST /v1/jobs`` answers an id at once, ``GET /v1/jobs/{id}``
the result when it is done.

A job's state lives in a file ``<id>.json`` in a folder every worker shares, written to a
temporary name and renamed, so that under ``--workers N`` any worker can answer for a job
another one runs. Finished results are removed after ``ttl_s``; at most ``max_jobs`` jobs wait
or run in one worker, so jobs cannot fill memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class TooManyJobs(Exception):
    pass


class JobStore:
    def __init__(
        self,
        folder: str | Path,
        ttl_s: float = 3600.0,
        max_jobs: int = 1024,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes  # inputs held by jobs not yet done
        self.held = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_expiry = 0.0

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _write(self, job_id: str, state: dict[str, Any]) -> None:
        tmp = self.folder / f".{job_id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._path(job_id))

    def submit(self, work: Callable[[], Awaitable[dict[str, Any]]], nbytes: int = 0) -> str:
        """Start ``work`` (holding ``nbytes`` of inputs) in the background; its result (or
        error) lands in the job's file."""
        if len(self._tasks) >= self.max_jobs:
            raise TooManyJobs(f"{len(self._tasks)} jobs are waiting or running (max_jobs)")
        if self.held + nbytes > self.max_bytes:
            raise TooManyJobs(f"waiting jobs hold {self.held} bytes of inputs (max_job_bytes)")
        loop = asyncio.get_running_loop()
        if time.monotonic() - self._last_expiry > min(60.0, self.ttl_s):  # not on every job
            self._last_expiry = time.monotonic()
            loop.run_in_executor(None, self.expire)
        job_id = uuid.uuid4().hex
        self._write(job_id, {"id": job_id, "status": "pending", "submitted": time.time()})
        self.held += nbytes
        task = loop.create_task(self._run(job_id, work, nbytes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job_id

    async def _run(
        self, job_id: str, work: Callable[[], Awaitable[dict[str, Any]]], nbytes: int
    ) -> None:
        state: dict[str, Any] = {"id": job_id}
        try:
            state.update(status="done", result=await work())
        except Exception as exc:  # the job failed; the server goes on
            state.update(status="failed", error=" ".join(str(exc).split()) or type(exc).__name__)
        finally:
            self.held -= nbytes
        state["finished"] = time.time()
        self._write(job_id, state)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's state, or None for an id no worker issued (or one that expired)."""
        if not JOB_ID.match(job_id):
            return None
        try:
            state: dict[str, Any] = json.loads(self._path(job_id).read_text())
            return state
        except (OSError, json.JSONDecodeError):
            return None

    def expire(self) -> None:
        """Remove the files of jobs older than the time to live, and the oldest beyond
        ``16 * max_jobs`` files, so a flood of jobs cannot fill the disk either."""
        cutoff = time.time() - self.ttl_s
        files = []
        for p in self.folder.glob("*.json"):
            try:
                mtime = p.stat().st_mtime
                if mtime < cutoff:
                    p.unlink()
                else:
                    files.append((mtime, p))
            except OSError:
                pass  # another worker removed it first
        for _, p in sorted(files)[: max(0, len(files) - 16 * self.max_jobs)]:
            p.unlink(missing_ok=True)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for the jobs of this worker to finish."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
