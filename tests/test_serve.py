"""``dlforge serve`` as a real process on a free local port: its answers equal
``Session.predict``, it batches, refuses overload and bad bodies politely, exports Prometheus
metrics and shuts down gracefully. tritonclient (others' client for the protocol) talks to it."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from dlforge.deploy import Client, ServerError, Session
from dlforge.deploy.loadgen import ServerProcess
from dlforge.pipeline import run
from dlforge.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run folder with exported fp32 and int8 files (1 epoch: the answers, not the
    accuracy, are under test)."""
    out = tmp_path_factory.mktemp("serve")
    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [f"output_dir={out}", "train.epochs=1", "quantize.enabled=true", "report.enabled=false"],
    )
    return run(recipe).run_dir


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    from dlforge.data.builtin import digits

    return digits().x[:64].astype(np.float32)  # un-normalised, as a client sends them


@pytest.fixture(scope="module")
def server(run_dir: Path) -> ServerProcess:
    with ServerProcess(run_dir, "--set", "serve.max_wait_ms=20") as s:
        yield s


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy header claiming ``shape`` with no data after it."""
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[no-untyped-call]
    return buf.getvalue()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def test_answers_equal_session_predict(server: ServerProcess, run_dir: Path, raw: np.ndarray):
    session = Session.from_run(run_dir, "int8", threads=1)
    expected_logits = session.logits(raw)
    expected = session.predict(raw)
    r = httpx.post(f"{server.url}/v1/predict", json={"inputs": raw.tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["classes"] == expected
    np.testing.assert_allclose(r.json()["probabilities"], session.predict_proba(raw), atol=1e-5)
    r = httpx.post(f"{server.url}/v1/predict", content=npy(raw[:5]),
                   headers={"content-type": "application/x-npy"})  # fmt: skip
    assert r.json()["classes"] == expected[:5]
    one = httpx.post(f"{server.url}/v1/predict", json={"inputs": raw[7].tolist()})  # one sample
    assert one.json()["classes"] == [expected[7]]
    name = run_dir.name
    body = {"inputs": [{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32",
                        "data": raw[:3].ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body)
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["logits"]["shape"] == [3, 10]
    np.testing.assert_allclose(
        np.reshape(out["logits"]["data"], (3, 10)), expected_logits[:3], atol=1e-5
    )
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["input_shape"] == [1, 8, 8] and info["precision"] == "int8"
    assert info["backend"] == "ort" and info["classes"] == session.class_names


def test_tritonclient_gets_the_same_predictions(
    server: ServerProcess, run_dir: Path, raw: np.ndarray
) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    name = run_dir.name
    assert client.is_server_live() and client.is_server_ready()
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}  # KServe reads it
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    session = Session.from_run(run_dir, "int8", threads=1)
    for binary in (True, False):  # the binary tensor extension, and plain JSON
        inp = triton.InferInput("input", list(raw[:16].shape), "FP32")
        inp.set_data_from_numpy(raw[:16], binary_data=binary)
        outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer(name, [inp], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("logits"), session.logits(raw[:16]), atol=1e-5)
    with pytest.raises(Exception, match="not served here"):
        client.get_model_metadata("another-model")
    config = client.get_model_config(name)
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [1, 8, 8]
    assert client.get_model_repository_index() == [{"name": name, "version": "1", "state": "READY"}]


def test_png_upload_runs_the_stored_preprocessing(
    server: ServerProcess, run_dir: Path, raw: np.ndarray
) -> None:
    session = Session.from_run(run_dir, "int8", threads=1)
    img = (raw[3, 0] * 255).round().astype(np.uint8)  # an 8x8 grey image of a digit
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    r = httpx.post(f"{server.url}/v1/predict", content=png.getvalue(),
                   headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    expected = session.predict((img.astype(np.float32) / 255)[None, None])
    assert r.json()["classes"] == expected
    files = [("file", ("a.png", png.getvalue(), "image/png"))] * 2  # a multipart upload of two
    r = httpx.post(f"{server.url}/v1/predict", files=files)
    assert r.json()["classes"] == expected * 2
    parts = [("a", ("a.npy", npy(raw[:2]), "application/octet-stream")),
             ("b", ("b.npy", npy(raw[2:5]), "application/octet-stream"))]  # fmt: skip
    r = httpx.post(f"{server.url}/v1/predict", files=parts)
    assert r.json()["classes"] == session.predict(raw[:5])


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (json.dumps({"inputs": [[1, 2], [3]]}).encode(), {}, "lists of different lengths"),
        (json.dumps({"inputs": "abc"}).encode(), {}, "must be a (nested) list"),
        (json.dumps({"inputs": [["a"] * 64]}).encode(), {}, "not an array of numbers"),
        (json.dumps({"x": 1}).encode(), {}, 'an object with an "inputs" array'),
        (json.dumps({"inputs": np.zeros((2, 64)).tolist()}).encode(), {}, r"expects (1, 8, 8)"),
        (b"\x93NUMPY garbage", {"content-type": "application/x-npy"}, "not a readable .npy"),
        (npy(np.array([{"a": 1}], dtype=object)), {"content-type": "application/x-npy"},
         "not a readable .npy"),  # a pickle inside is refused, never loaded
        (b"GIF89a...", {"content-type": "image/png"}, "not a readable image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", {"content-type": "image/png"},
         "not a readable image"),  # EPS would run Ghostscript: never opened
        (npy_header((2**40,)), {"content-type": "application/x-npy"}, "header claims shape"),
        (b"[1]", {"content-type": "Application/JSON"}, 'an object with an "inputs" array'),
        (b'{"inputs": ' + b"9" * 5000 + b"}", {}, "not valid JSON"),
        (b"a,b", {"content-type": "text/csv"}, "content type 'text/csv' is not accepted"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), np.nan).tolist()}).encode(), {},
         "NaN or infinite"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, "nested too deeply"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_422_naming_the_problem(
    server: ServerProcess, body: bytes, headers: dict[str, str], message: str
) -> None:
    r = httpx.post(f"{server.url}/v1/predict", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]


def test_v2_requests_that_do_not_fit_get_422(server: ServerProcess, run_dir: Path) -> None:
    url = f"{server.url}/v2/models/{run_dir.name}/infer"

    def inp(**kw: object) -> dict[str, object]:
        spec = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
        return {"inputs": [{**spec, **kw}]}

    cases = [
        (inp(datatype="BYTES"), "datatype 'BYTES' is not one of"),
        (inp(shape=[1, 64]), "the model expects [N, 1, 8, 8]"),
        (inp(data=[0.0] * 63), "63 values do not make shape"),
        (inp(name="image"), 'input "image" is unknown'),
        ({"inputs": []}, "takes one input tensor"),
        ({**inp(), "outputs": [{"name": "embeddings"}]}, "output 'embeddings' is unknown"),
        (inp(shape=[2**32, 2**32], data=[]), "values do not make shape"),
        (inp(shape=[True, 1, 8, 8]), "non-negative integers"),
        (inp(shape=[1] * 40), "at most 32"),
        (inp(parameters="x"), '"parameters" must be an object'),
        ({**inp(), "parameters": [1]}, '"parameters" must be an object'),
        (
            {**inp(), "outputs": [{"name": "class", "parameters": {"class_count": 3}}]},
            "['class_count'] are not supported",
        ),
        (inp(data=["0.5"] * 64), "not an array of numbers"),
        (inp(data=[3e38] * 64), "NaN or infinite"),  # finite, but overflows once normalised
    ]
    for body, message in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == 422 and message in r.json()["error"], (body, r.text)
    r = httpx.post(
        url, content=b'{"inputs": []}xx', headers={"inference-header-content-length": "99"}
    )
    assert r.status_code == 422 and "does not fit" in r.json()["error"]
    r = httpx.post(url, content=b"\x1f\x8b...", headers={"content-encoding": "gzip"})
    assert r.status_code == 415 and "uncompressed" in r.json()["error"]
    r = httpx.post(url.replace("/infer", "/versions/7/infer"), json=inp())
    assert r.status_code == 404 and "version 7" in r.json()["error"]
    assert httpx.post(url, json=inp()).status_code == 200


def test_body_limit_gives_413_and_the_server_goes_on(run_dir: Path) -> None:
    with ServerProcess(run_dir, "--set", "serve.max_body_bytes=4096",
                       "--set", "serve.max_rows=8") as s:  # fmt: skip
        big = np.zeros((40, 1, 8, 8), np.float32)
        r = httpx.post(f"{s.url}/v1/predict", content=npy(big),
                       headers={"content-type": "application/x-npy"})  # fmt: skip
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit counts the bytes as they come
            for _ in range(10):
                yield b" " * 1000

        r = httpx.post(f"{s.url}/v1/predict", content=chunks())
        assert r.status_code == 413
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": np.zeros((9, 1, 8, 8)).tolist()})
        assert r.status_code == 413 and "max_rows" in r.json()["error"]
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": np.zeros((2, 1, 8, 8)).tolist()})
        assert r.status_code == 200


def test_concurrent_requests_are_joined_into_batches(run_dir: Path, raw: np.ndarray) -> None:
    session = Session.from_run(run_dir, "int8", threads=1)
    with ServerProcess(run_dir, "--set", "serve.max_wait_ms=300") as s, httpx.Client() as http:

        def one(i: int) -> list[str]:
            return http.post(f"{s.url}/v1/predict", json={"inputs": raw[i].tolist()}).json()[
                "classes"
            ]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(16)))
        assert answers == [[c] for c in session.predict(raw[:16])]  # each caller its own row
        families = metric_families(http.get(f"{s.url}/metrics").text)
        samples = {x.name: x.value for x in families["dlforge_batch_size"].samples}
        assert samples["dlforge_batch_size_sum"] == 16
        assert samples["dlforge_batch_size_count"] <= 4  # 16 requests in at most 4 model calls


def metric_families(text: str) -> dict[str, object]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_as_prometheus_text(server: ServerProcess, raw: np.ndarray) -> None:
    httpx.post(f"{server.url}/v1/predict", json={"inputs": raw[:2].tolist()})
    httpx.post(f"{server.url}/v1/predict", content=b"{")
    families = metric_families(httpx.get(f"{server.url}/metrics").text)
    for name in ("dlforge_requests", "dlforge_request_latency_seconds", "dlforge_batch_size",
                 "dlforge_inference_seconds", "dlforge_queue_depth"):  # fmt: skip
        assert name in families, name
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["dlforge_requests"].samples  # type: ignore[attr-defined]
        if s.name == "dlforge_requests_total"
    }
    assert counts[("/v1/predict", "200")] >= 1 and counts[("/v1/predict", "422")] >= 1


def test_overload_gives_503_with_retry_after_and_the_server_recovers(
    run_dir: Path, raw: np.ndarray
) -> None:
    with ServerProcess(run_dir, "--set", "serve.max_queue=1", "--set", "serve.max_batch_size=1",
                       "--precision", "fp32") as s:  # fmt: skip
        big = npy(np.resize(raw, (4000, 1, 8, 8)))  # each request keeps the model busy a while
        statuses: list[int] = []
        retry_after: set[str | None] = set()

        def hit(_: int) -> None:
            r = httpx.post(f"{s.url}/v1/predict", content=big,
                           headers={"content-type": "application/x-npy"}, timeout=60)  # fmt: skip
            statuses.append(r.status_code)
            if r.status_code == 503:
                retry_after.add(r.headers.get("retry-after"))

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(hit, range(36)))
        assert set(statuses) == {200, 503}, statuses
        assert retry_after == {"1"}
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": raw[:2].tolist()})
        assert r.status_code == 200
        assert httpx.get(f"{s.url}/healthz").json()["queue_depth"] == 0


def test_per_client_limit_gives_429(run_dir: Path, raw: np.ndarray) -> None:
    with ServerProcess(run_dir, "--set", "serve.max_inflight_per_client=1",
                       "--set", "serve.max_wait_ms=500") as s:  # fmt: skip
        body = {"inputs": raw[:1].tolist()}

        def hit(client: str) -> int:
            return httpx.post(f"{s.url}/v1/predict", json=body,
                              headers={"x-client-id": client}).status_code  # fmt: skip

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(hit, "alice")
            time.sleep(0.2)  # alice's first request waits in the batcher
            second, bob = pool.submit(hit, "alice"), pool.submit(hit, "bob")
            assert (first.result(), second.result(), bob.result()) == (200, 429, 200)


def test_graceful_shutdown_finishes_requests_in_flight(run_dir: Path, raw: np.ndarray) -> None:
    server = ServerProcess(run_dir, "--set", "serve.max_wait_ms=1500")
    with server:
        answer: dict[str, int] = {}

        def slow() -> None:  # waits 1.5 s in the batcher for others to join
            r = httpx.post(
                f"{server.url}/v1/predict", json={"inputs": raw[:1].tolist()}, timeout=30
            )
            answer["status"] = r.status_code

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.4)
        code, log = server.stop()
        t.join()
        assert answer["status"] == 200, log
        # uvicorn finishes its shutdown, then re-raises SIGTERM: the conventional exit status
        assert code in (0, -signal.SIGTERM), log
        assert "Application shutdown complete" in log
        with pytest.raises(httpx.ConnectError):  # and it is gone
            httpx.get(f"{server.url}/healthz")
    jobs_dir = re.search(r"jobs in (\S+)", log)
    assert jobs_dir and not Path(jobs_dir.group(1)).exists()  # its jobs folder went with it


def test_client_sync_async_and_jobs(server: ServerProcess, run_dir: Path, raw: np.ndarray) -> None:
    session = Session.from_run(run_dir, "int8", threads=1)
    expected = session.predict(raw)
    with Client(server.url) as client:
        assert client.predict(raw)["classes"] == expected
        job = client.submit(raw)
        assert client.wait(job)["classes"] == expected
        assert client.job(job)["status"] == "done"
        with pytest.raises(ServerError, match="HTTP 422.*expects"):
            client.predict(np.zeros((2, 3)))
        with pytest.raises(ServerError, match="HTTP 404"):
            client.job("0" * 32)

        async def together() -> list[list[str]]:
            answers = await asyncio.gather(
                *(client.apredict(raw[i : i + 8]) for i in range(0, 64, 8))
            )
            job = await client.asubmit(raw[:4])
            done = await client.await_job(job)
            await client.aclose()
            return [a["classes"] for a in answers] + [done["classes"]]

        got = asyncio.run(together())
        assert [c for part in got[:-1] for c in part] == expected and got[-1] == expected[:4]


def test_workers_share_one_port_and_their_metrics(run_dir: Path, raw: np.ndarray) -> None:
    with ServerProcess(run_dir, "--workers", "2") as s:
        expected = Session.from_run(run_dir, "int8", threads=1).predict(raw[:4])
        with httpx.Client() as http:
            for _ in range(20):  # new connections: the kernel spreads them over the workers
                r = httpx.post(f"{s.url}/v1/predict", json={"inputs": raw[:4].tolist()})
                assert r.json()["classes"] == expected
            pids = set()
            deadline = time.monotonic() + 20
            while len(pids) < 2 and time.monotonic() < deadline:
                pids.add(httpx.get(f"{s.url}/healthz").json()["pid"])
            assert len(pids) == 2  # both workers answered
            job = http.post(f"{s.url}/v1/jobs", json={"inputs": raw[:4].tolist()}).json()["id"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # any worker answers for any worker's job
                state = httpx.get(f"{s.url}/v1/jobs/{job}").json()
                if state["status"] == "done":
                    break
                time.sleep(0.05)
            assert state["result"]["classes"] == expected
            families = metric_families(http.get(f"{s.url}/metrics").text)
            total = sum(
                x.value
                for x in families["dlforge_requests"].samples  # type: ignore[attr-defined]
                if x.name == "dlforge_requests_total" and x.labels["route"] == "/v1/predict"
            )
            assert total == 20  # both workers' counts, whichever answered the scrape


def test_unknown_precision_or_target_is_refused_before_starting(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlforge.cli import main

    assert main(["serve", str(run_dir), "--precision", "bf16"]) == 2  # ORT has no bf16
    assert "precision" in capsys.readouterr().err
    assert main(["serve", str(run_dir / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--set", "train.epochs=1"]) == 2
    assert "serve.* settings only" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(run_dir), "--port", port]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_stage_load_tests_the_run_and_reports_it(tmp_path: Path) -> None:
    recipe = load_recipe(
        ROOT / "recipes/default.yaml",
        [f"output_dir={tmp_path}", "train.epochs=1", "quantize.enabled=true",
         "serve.enabled=true", "serve.loadtest.concurrency=[1,4]", "serve.loadtest.requests=60",
         "serve.loadtest.duration_s=3"],
    )  # fmt: skip
    outcome = run(recipe)
    rows = outcome.metrics["serve"]["rows"]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [
        ("batch-1", 1), ("batch-1", 4), ("dynamic (0 ms)", 1), ("dynamic (0 ms)", 4)
    ]  # fmt: skip
    assert all(r["statuses"] == {"200": 60} and r["p99_ms"] >= r["p50_ms"] for r in rows)
    html = outcome.report_path.read_text()
    assert "Serving (load test)" in html and "latency_throughput" in html


def test_serve_stage_needs_the_exported_files(tmp_path: Path) -> None:
    from dlforge.config import ConfigError

    recipe = load_recipe(None, [f"output_dir={tmp_path}", "serve.enabled=true", "train.epochs=1"])
    with pytest.raises(ConfigError, match="enable quantize"):
        run(recipe)


def test_an_onnx_file_is_served_with_or_without_its_preprocessing(
    run_dir: Path, raw: np.ndarray, tmp_path: Path
) -> None:
    import shutil

    session = Session.from_run(run_dir, "int8", threads=1)
    with ServerProcess(run_dir / "deploy" / "model_int8.onnx") as s:  # preprocessing beside it
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": raw[:8].tolist()})
        assert r.json()["classes"] == session.predict(raw[:8])
        assert httpx.get(f"{s.url}/v1/model").json()["name"] == "model_int8"
    (run_dir / "compress").mkdir(exist_ok=True)  # a run's other files find deploy/'s preprocessing
    other = shutil.copy(run_dir / "deploy" / "model_int8.onnx", run_dir / "compress" / "x.onnx")
    with ServerProcess(other) as s:
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": raw[:8].tolist()})
        assert r.json()["classes"] == session.predict(raw[:8])
    bare = shutil.copy(run_dir / "deploy" / "model_int8.onnx", tmp_path / "bare.onnx")
    with ServerProcess(bare) as s:  # no preprocessing: inputs go to the model as they come
        normalised = session.check_inputs(raw[:8])
        stats = session.preprocessing["normalize"]
        normalised = (normalised - stats["mean"][0]) / stats["std"][0]
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": normalised.tolist()})
        assert r.json()["indices"] == session.logits(raw[:8]).argmax(1).tolist()
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": np.zeros((1, 64)).tolist()})
        assert r.status_code == 422 and "(1, 8, 8)" in r.json()["error"]  # the file's own shape
