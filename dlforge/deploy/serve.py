"""The inference server: FastAPI on uvicorn, started by ``dlforge serve``.

Routes (the README's "Serving" section has examples):

- Open Inference Protocol (KServe v2, as Triton, KServe and Seldon serve it):
  ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}``,
  ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` (JSON or binary tensors),
  and Triton's ``GET /v2/models/{name}/config`` and ``POST /v2/repository/index``.
- dlforge's own: ``POST /v1/predict`` (JSON ``{"inputs": ...}``, a ``.npy`` body, or images
  for models trained on image sources), ``GET /v1/model``, ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` (asynchronous),
  ``GET /healthz``, ``GET /metrics`` (Prometheus).

Inputs are raw, as the data source yields them: the server applies the stored normalisation.
Concurrent requests are joined by the ``DynamicBatcher``. Load is refused early and politely:
503 with Retry-After when the queue is full (checked before the body is read), 429 beyond a
client's in-flight limit, 413 for a body or decoded input over its limit, 415 for a compressed
body, 422 naming what was expected for input that does not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlforge.config import DlforgeError
from dlforge.data.normalize import apply_normalizer
from dlforge.deploy import protocol
from dlforge.deploy.batching import BatcherClosed, DynamicBatcher, QueueFull
from dlforge.deploy.config import ServeConfig
from dlforge.deploy.jobs import JobStore, TooManyJobs
from dlforge.deploy.metrics import ServerMetrics
from dlforge.deploy.session import PREPROCESSING_FILE, InputError, Session

log = logging.getLogger(__name__)
SPEC_ENV = "DLFORGE_SERVE_SPEC"  # how `--workers N` hands each worker what to serve
PLATFORMS = {"ort": "onnxruntime_onnx", "openvino": "openvino_onnx"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class Overloaded(Exception):
    """Refused for load (503, or 429 per client); ``retry`` False when shutting down."""

    def __init__(self, status: int, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.status, self.retry = status, retry


class UnknownModel(Exception):
    pass


class UnsupportedEncoding(Exception):
    pass


@dataclass
class ServeSpec:
    """What one server process serves: the ONNX file, its preprocessing, the settings."""

    onnx_path: str
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    model_name: str = "model"
    jobs_dir: str | None = None

    @property
    def serve_config(self) -> ServeConfig:
        from dlforge.config import from_dict

        return from_dict(ServeConfig, self.config)


def resolve_target(
    target: str | Path, precision: str, preprocessing_file: str | Path | None = None
) -> tuple[Path, dict[str, Any], str]:
    """A run folder (its ``deploy/``), a deploy folder, or an ONNX file with its
    ``preprocessing.json`` beside it (or ``preprocessing_file``): the file to serve, its
    preprocessing, a model name."""
    from dlforge.deploy.backends import file_for

    p = Path(target)
    if p.is_dir():
        deploy = p / "deploy" if not (p / file_for(precision)).is_file() else p
        onnx_path = deploy / file_for(precision)
        name = (p if deploy != p else p.parent).name
    else:
        onnx_path, deploy, name = p, p.parent, p.stem
        if not (deploy / PREPROCESSING_FILE).is_file() and (p.parent.parent / "deploy").is_dir():
            deploy = p.parent.parent / "deploy"  # a run's compress/ or ensemble/ file
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"{onnx_path} not found: serve a run folder after its quantize stage, "
            "or an ONNX file (dlforge quantize writes both)"
        )
    pre = Path(preprocessing_file) if preprocessing_file else deploy / PREPROCESSING_FILE
    preprocessing: dict[str, Any] = {}
    if preprocessing_file and not pre.is_file():
        raise FileNotFoundError(f"preprocessing file not found: {pre}")
    if pre.is_file():
        try:
            preprocessing = json.loads(pre.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{pre} is not valid JSON ({exc})") from None
        if not isinstance(preprocessing, dict):
            raise InputError(f"{pre} must hold a JSON object (input_shape, normalize, ...)")
    else:
        log.warning("%s not found: inputs are passed to the model as they come", pre)
    if pre.is_file() and pre.parent != onnx_path.parent:
        log.info("preprocessing from %s", pre)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"
    return onnx_path, preprocessing, safe


# ---- ASGI middleware: body limit and request metrics -----------------------------------------


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once when Content-Length says so, else as soon as
    the bytes read pass it (a chunked upload never lands in memory whole)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive, self.limit)  # so that the client reads the answer
            await _send_json(send, 413, {"error": self._message(int(length))})
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return f"a body of {size} bytes or more; the limit is {self.limit} (max_body_bytes)"


async def _drain(receive: Receive, cap: int) -> None:
    """Read and drop a request body (up to ``cap`` bytes): a client still sending when the
    server answers sees a broken pipe instead of the answer."""
    seen = 0
    while seen <= cap:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class RequestMetrics:
    """Counts every response by route template and status, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"  # templates: bounded labels
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)


# ---- the app -----------------------------------------------------------------------------------


class Server:
    """What the routes share: the session, the batcher, limits, metrics and jobs."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self.cfg = spec.serve_config
        threads = self.cfg.threads or max(1, (os.cpu_count() or 1) // self.cfg.workers)
        self.session = Session(
            spec.onnx_path, spec.preprocessing, threads, self.cfg.backend, self.cfg.precision
        )
        self.model_name = spec.model_name
        self.metrics = ServerMetrics()
        self.batcher = DynamicBatcher(
            self.session.model,
            self.cfg.max_batch_size,
            self.cfg.max_wait_ms,
            self.cfg.max_queue,
            on_batch=self.metrics.observe_batch,
        )
        self.inflight: Tally[str] = Tally()  # requests in flight, per client
        self.client_jobs: Tally[str] = Tally()  # jobs waiting or running, per client
        self.jobs: JobStore | None = None
        self._own_jobs_dir: tempfile.TemporaryDirectory[str] | None = None
        self.ready = False

    def warm_up(self) -> None:
        """Run every batch size the batcher can form once before taking requests: engines
        plan memory (OpenVINO: compile) per input shape on first sight, a cost better paid
        before the first client than by the requests in flight when a new size first forms."""
        shape = self.session.input_shape
        if not shape:
            return  # a file with dynamic sizes past the batch: nothing fixed to warm up
        largest = min(self.cfg.max_batch_size, 256)
        for n in range(1, largest + 1):
            self.session.model(np.zeros((n, *shape), np.float32))

    async def start(self) -> None:
        if self.cfg.workers > 1:
            forget_dead_workers()
        if self.cfg.warmup:
            await asyncio.get_running_loop().run_in_executor(None, self.warm_up)
        # Everything loaded so far lives as long as the server: move it out of the collector's
        # sight, so that a full collection under load does not walk it (a ~0.1 s stall).
        gc.collect()
        gc.freeze()
        self.batcher.start()
        folder = self.spec.jobs_dir
        if folder is None:  # removed at shutdown (uvicorn re-raises SIGTERM after it)
            self._own_jobs_dir = tempfile.TemporaryDirectory(prefix="dlforge-jobs-")
            folder = self._own_jobs_dir.name
        self.jobs = JobStore(folder, self.cfg.job_ttl_s, self.cfg.max_jobs, self.cfg.max_job_bytes)
        log.info("asynchronous jobs in %s", folder)
        self.ready = True

    async def stop(self) -> None:
        """Uvicorn has finished the requests in flight; finish queued work and jobs."""
        self.ready = False
        if self.jobs is not None:
            await self.jobs.drain(self.cfg.graceful_timeout_s)
        await self.batcher.close()
        if self._own_jobs_dir is not None:
            self._own_jobs_dir.cleanup()

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs checked against the model and the limits, then normalised."""
        x = self.session.check_inputs(x)
        if len(x) > self.cfg.max_rows:
            raise BodyTooLarge(
                f"{len(x)} samples in one request; at most {self.cfg.max_rows} (max_rows)"
            )
        if x.size * 4 > self.cfg.max_decoded_bytes:
            raise BodyTooLarge(
                f"inputs of {x.size * 4} bytes as float32; at most {self.cfg.max_decoded_bytes} "
                "(max_decoded_bytes)"
            )
        stats = self.session.preprocessing.get("normalize")
        if stats:
            x = apply_normalizer(x, stats)
        # JSON allows NaN and Infinity, and huge finite values overflow once normalised
        if not np.isfinite(x).all():
            raise InputError("the inputs hold NaN or infinite values (or overflow float32)")
        return np.ascontiguousarray(x, dtype=np.float32)

    def check_room(self) -> None:
        """503 at once when the queue is full, before the body is read or parsed."""
        if self.batcher.waiting >= self.cfg.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise Overloaded(
                503, f"the server is busy ({self.batcher.waiting} requests wait); retry later"
            )

    async def logits(self, x: np.ndarray, count_refusal: bool = True) -> np.ndarray:
        """Prepared inputs through the batcher; refused when the queue is full."""
        self.metrics.queue_depth.inc()
        try:
            out = await self.batcher.submit(x)
        except QueueFull as exc:
            if count_refusal:
                self.metrics.rejected.labels("queue_full").inc()
            raise Overloaded(503, f"the server is busy: {exc}; retry later") from None
        except BatcherClosed as exc:
            raise Overloaded(503, str(exc), retry=False) from None
        finally:
            self.metrics.queue_depth.dec()
        if not np.isfinite(out).all():
            raise InputError("the model's outputs are not finite for these inputs")
        return out

    @contextlib.contextmanager
    def client_slot(self, key: str) -> Any:
        """Count a client's requests in flight; 429 beyond ``max_inflight_per_client``."""
        limit = self.cfg.max_inflight_per_client
        if limit and self.inflight[key] >= limit:
            self.metrics.rejected.labels("per_client").inc()
            raise Overloaded(429, f"client '{key}' has {limit} requests in flight (the limit)")
        self.inflight[key] += 1
        try:
            yield
        finally:
            self.inflight[key] -= 1
            if self.inflight[key] <= 0:
                del self.inflight[key]  # no entry left behind per client: no slow leak

    async def job_logits(self, x: np.ndarray) -> np.ndarray:
        """Like ``logits``, but a job waits for room in the queue instead of being refused."""
        while True:
            try:
                return await self.logits(x, count_refusal=False)
            except Overloaded as exc:
                if not exc.retry:
                    raise
                await asyncio.sleep(0.05)

    def submit_job(self, key: str, x: np.ndarray) -> str:
        """Start a job for client ``key``; 429 beyond its share of the job slots."""
        assert self.jobs is not None
        limit = self.cfg.max_inflight_per_client
        if limit and self.client_jobs[key] >= limit:
            self.metrics.rejected.labels("per_client").inc()
            raise Overloaded(429, f"client '{key}' has {limit} jobs waiting (the limit)")

        async def work() -> dict[str, Any]:
            try:
                return protocol.v1_response(self.session, await self.job_logits(x))
            finally:
                self.client_jobs[key] -= 1
                if self.client_jobs[key] <= 0:
                    del self.client_jobs[key]

        job_id = self.jobs.submit(work, x.nbytes)
        self.client_jobs[key] += 1
        return job_id

    def model_info(self) -> dict[str, Any]:
        model = self.session.model
        return {
            "name": self.model_name,
            "input_shape": list(self.session.input_shape),
            "input_name": model.input_name,
            "classes": self.session.class_names,
            "backend": model.backend,
            "precision": model.precision,
            "file": Path(model.path).name,
            "image_input": self.session.image_mode is not None,
            "decision": self.session.decision,
            "batching": {"max_batch_size": self.cfg.max_batch_size,
                         "max_wait_ms": self.cfg.max_wait_ms, "max_queue": self.cfg.max_queue},
        }  # fmt: skip


def forget_dead_workers() -> None:
    """Drop the Prometheus files of worker processes that died (uvicorn restarts them), so
    their last queue depth is not summed for ever."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    import psutil
    from prometheus_client import multiprocess

    for f in Path(folder).glob("*_*.db"):
        pid = f.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            multiprocess.mark_process_dead(int(pid), folder)


IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff")


def parse_inputs(server: Server, kind: str, body: bytes, files: list[bytes]) -> np.ndarray:
    """A request body as raw inputs (run in a worker thread: decoding images or a large JSON
    body must not hold up the event loop)."""
    if files:
        if all(f[:6] == b"\x93NUMPY" for f in files):  # .npy parts: one batch, in order
            arrays = [protocol.read_npy(f) for f in files]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if len(files) > server.cfg.max_images:
            raise BodyTooLarge(
                f"{len(files)} images in one request; at most {server.cfg.max_images}"
            )
        return np.stack([server.session.decode_image(b) for b in files])
    if kind in ("application/x-npy", "application/octet-stream"):
        return protocol.read_npy(body)
    if kind in IMAGE_TYPES:
        return server.session.decode_image(body)[None]
    if kind in ("application/json", ""):
        return protocol.v1_inputs(protocol.parse_json(body))
    hint = (
        " (curl -d sends it: add -H 'content-type: application/json')"
        if "urlencoded" in kind
        else ""
    )
    raise InputError(
        f"content type '{kind}' is not accepted{hint}: send application/json, "
        "application/x-npy, an image (png, jpeg, bmp, gif, webp, tiff) or multipart/form-data"
    )


# Bodies larger than this (and images) are parsed on a worker thread; smaller ones on the event
# loop, where parsing costs less than the hand-off to a thread (measured: handing every small
# request to a thread cut dynamic batching's throughput by half on 2 cores).
OFF_LOOP_BYTES = 256 * 1024


async def off_loop(work: Callable[[], Any], size: int) -> Any:
    """``work()`` on a worker thread when ``size`` passes OFF_LOOP_BYTES, else right here."""
    if size <= OFF_LOOP_BYTES:
        return work()
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(work)


def create_app(spec: ServeSpec) -> Any:
    """The FastAPI app serving ``spec`` (wrapped in the body-limit and metrics middleware)."""
    server = Server(spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="dlforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError) -> Any:
        return error(422, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Any:
        return error(413, str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> Any:
        return error(exc.status, str(exc), {"Retry-After": str(server.cfg.retry_after_s)})

    @app.exception_handler(TooManyJobs)
    async def _too_many_jobs(request: Request, exc: TooManyJobs) -> Any:
        return error(503, str(exc), {"Retry-After": str(server.cfg.retry_after_s)})

    @app.exception_handler(UnsupportedEncoding)
    async def _encoding(request: Request, exc: UnsupportedEncoding) -> Any:
        return error(415, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> Any:  # the model itself failed
        log.exception("request failed")
        return error(500, f"inference failed ({type(exc).__name__}; see the server's log)")

    def client_key(request: Request) -> str:
        header = request.headers.get("x-client-id")
        return header[:64] if header else (request.client.host if request.client else "?")

    def check_name(name: str, version: str = "1") -> None:
        if name != server.model_name or version != "1":
            raise UnknownModel(name if name != server.model_name else f"{name}, version {version}")

    @app.exception_handler(UnknownModel)
    async def _unknown_model(request: Request, exc: UnknownModel) -> Any:
        return error(
            404, f"model '{exc.args[0]}' is not served here; it is '{server.model_name}', version 1"
        )

    def content_type(request: Request) -> str:
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise UnsupportedEncoding(
                f"content encoding '{encoding}' is not accepted: send the body uncompressed"
            )
        return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()

    # -- health and description
    @app.get("/healthz")
    async def healthz() -> Any:
        if not server.batcher.alive and server.ready:
            return error(503, "the batcher has stopped")
        return {"status": "ok" if server.ready else "starting", "pid": os.getpid(),
                "queue_depth": server.batcher.depth}  # fmt: skip

    @app.get("/v2/health/live")
    async def live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        ok = server.ready and server.batcher.alive
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> Any:
        from dlforge import __version__

        return {"name": "dlforge", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1") -> Any:
        check_name(name, version)
        platform = PLATFORMS[server.session.backend]
        return protocol.v2_metadata(server.model_name, server.session, platform)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1") -> Any:
        check_name(name, version)
        ok = server.ready and server.batcher.alive
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str = "1") -> Any:
        """Triton's model-configuration extension, as far as it describes this model."""
        check_name(name, version)
        meta = protocol.v2_metadata(server.model_name, server.session, "")

        def tensors(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": t["name"], "data_type": "TYPE_" + t["datatype"],
                     "dims": t["shape"][1:]} for t in specs]  # fmt: skip

        return {
            "name": server.model_name,
            "platform": PLATFORMS[server.session.backend],
            "max_batch_size": server.cfg.max_batch_size,
            "input": tensors(meta["inputs"]),
            "output": tensors(meta["outputs"]),
            "dynamic_batching": {"max_queue_delay_microseconds": int(server.cfg.max_wait_ms * 1e3)},
        }

    @app.post("/v2/repository/index")
    async def repository_index() -> Any:
        state = "READY" if server.ready else "UNAVAILABLE"
        return [{"name": server.model_name, "version": "1", "state": state}]

    @app.get("/v1/model")
    async def model() -> Any:
        return server.model_info()

    @app.get("/metrics")
    async def metrics() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # -- inference
    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1") -> Any:
        check_name(name, version)
        server.check_room()
        with server.client_slot(client_key(request)):
            content_type(request)
            body = await request.body()
            header = request.headers.get(protocol.HEADER_LENGTH)
            session, input_name = server.session, server.session.model.input_name

            def parse() -> tuple[Any, np.ndarray]:
                payload, binary = protocol.split_binary(body, header)
                x = protocol.v2_input(payload, binary, session, input_name)
                protocol.v2_outputs(payload)  # refuse unknown outputs before running the model
                return payload, server.prepare(x)

            payload, x = await off_loop(parse, len(body))
            logits = await server.logits(x)
        content, headers = protocol.v2_response(server.model_name, payload, logits, session)
        return Response(content, headers=headers)

    async def read_inputs(request: Request) -> np.ndarray:
        kind = content_type(request)
        files: list[bytes] = []
        body = b""
        if kind == "multipart/form-data":
            try:
                form = await request.form(
                    max_files=server.cfg.max_images,
                    max_fields=16,
                    max_part_size=server.cfg.max_body_bytes,
                )
            except StarletteHTTPException as exc:  # a malformed form, too many files
                raise InputError(f"the multipart form cannot be read ({exc.detail})") from None
            uploads = [v for _, v in form.multi_items() if not isinstance(v, str)]
            if not uploads:
                raise InputError("the form holds no file: upload images (or a .npy) as files")
            files = [await f.read() for f in uploads]
        else:
            body = await request.body()
        size = len(body) + sum(len(f) for f in files)
        heavy = size > OFF_LOOP_BYTES or bool(files) or kind in IMAGE_TYPES
        return await off_loop(
            lambda: server.prepare(parse_inputs(server, kind, body, files)), OFF_LOOP_BYTES + heavy
        )

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        server.check_room()
        with server.client_slot(client_key(request)):
            x = await read_inputs(request)
            logits = await server.logits(x)
        return protocol.v1_response(server.session, logits)

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request) -> Any:
        key = client_key(request)
        with server.client_slot(key):
            x = await read_inputs(request)
        job_id = server.submit_job(key, x)
        return JSONResponse(
            {"id": job_id, "status": "pending", "url": f"/v1/jobs/{job_id}"},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str) -> Any:
        assert server.jobs is not None
        state = server.jobs.get(job_id)
        if state is None:
            return error(404, f"job '{job_id}' is unknown or expired")
        return JSONResponse(state, status_code=202 if state["status"] == "pending" else 200)

    return RequestMetrics(BodyLimit(app, server.cfg.max_body_bytes), server.metrics)


def app_from_env() -> Any:
    """The app factory each ``--workers`` process calls (its spec is a file named in the env:
    a run's preprocessing can be larger than one environment variable may hold)."""
    path = os.environ.get(SPEC_ENV)
    if not path:
        raise DlforgeError(f"{SPEC_ENV} is not set: start the server with `dlforge serve`")
    return create_app(ServeSpec(**json.loads(Path(path).read_text())))


def run_server(spec: ServeSpec, access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight and stop."""
    import uvicorn

    cfg = spec.serve_config
    common: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "access_log": access_log,
        "timeout_graceful_shutdown": cfg.graceful_timeout_s,
        "log_level": "info",
    }
    if cfg.workers == 1:  # the server makes (and removes) its own jobs folder
        uvicorn.run(create_app(spec), **common)
        return
    with tempfile.TemporaryDirectory(prefix="dlforge-serve-") as tmp:
        spec.jobs_dir = spec.jobs_dir or str(Path(tmp) / "jobs")
        metrics_dir = Path(tmp) / "metrics"
        metrics_dir.mkdir()
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(asdict(spec)))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ[SPEC_ENV] = str(spec_file)
        uvicorn.run(
            "dlforge.deploy.serve:app_from_env", factory=True, workers=cfg.workers, **common
        )
