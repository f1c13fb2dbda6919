"""Malformed inputs and malicious files through the CLI: each one is refused with one line that
names the input, a non-zero exit, no traceback, and nothing left in the runs folder."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dlforge.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/default.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint (one epoch of the default recipe) to corrupt in many ways."""
    out = tmp_path_factory.mktemp("trained")
    args = ["-q", "train", RECIPE, "--set", f"output_dir={out}", "--set", "train.epochs=1"]
    assert main(args) == 0
    return out / "default/checkpoints/best.safetensors"


def rewrite(src: Path, dst: Path, mutate: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of checkpoint ``src`` whose metadata is ``mutate(meta)`` (a string is stored as is)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["dlforge"])
    new = mutate(meta)
    header = new if isinstance(new, str) else json.dumps(meta if new is None else new)
    save_file(load_file(str(src)), str(dst), metadata={"dlforge": header})
    return dst


def set_in(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(meta: dict[str, Any]) -> None:
        node = meta
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return mutate


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.pop(key) and None


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_images(root: Path, classes: list[str], corrupt: bool = False) -> Path:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), color=(i * 40, 0, 0)).save(root / c / f"{i}.png")
    if corrupt:
        (root / classes[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


class Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("pwned",))


def run_set(*sets: str) -> list[str]:
    return ["run", RECIPE, "--set", "train.epochs=1", *[a for s in sets for a in ("--set", s)]]


def data_run(source: str, path: Path, *sets: str) -> list[str]:
    return run_set(f"data.source={source}", f"data.path={path}", *sets)


# (case id, build(files_dir, checkpoint) -> argv, text the one-line message must contain)
Case = tuple[str, Callable[[Path, Path], list[str]], str]

CASES: list[Case] = [
    # --- recipes and --set ------------------------------------------------------------------
    ("recipe-missing", lambda d, c: ["run", str(d / "nope.yaml")], "nope.yaml"),
    ("recipe-is-a-folder", lambda d, c: ["run", str(d)], "recipe not found"),
    (
        "recipe-bad-yaml",
        lambda d, c: ["run", str(write_csv(d / "r.yaml", "train: [x\n"))],
        "r.yaml",
    ),
    ("recipe-a-list", lambda d, c: ["run", str(write_csv(d / "l.yaml", "- 1\n"))], "l.yaml"),
    (
        "recipe-binary",
        lambda d, c: ["run", str(_write_bytes(d / "b.yaml", b"\xff\xfe\x00bin"))],
        "b.yaml",
    ),
    (
        "set-negative-epochs",
        lambda d, c: run_set("train.epochs=-1"),
        "train.epochs: must be >= 1, got -1",
    ),
    (
        "set-bad-optimizer",
        lambda d, c: run_set("train.optimizer.name=sgdd"),
        "train.optimizer.name: 'sgdd'",
    ),
    ("set-no-equals", lambda d, c: ["run", RECIPE, "--set", "train.epochs"], "train.epochs"),
    ("set-unknown-key", lambda d, c: run_set("train.epoch=3"), "train.epoch"),
    ("set-unknown-model", lambda d, c: run_set("model.name=resnet21"), "resnet21"),
    ("set-bad-model-kwarg", lambda d, c: run_set("model.kwargs.chanels=[8]"), "chanels"),
    ("set-name-escapes", lambda d, c: run_set("name=../x"), "name: must be a plain folder name"),
    ("set-bad-split", lambda d, c: run_set("evaluate.split=tset"), "evaluate.split: 'tset'"),
    # --- data files -------------------------------------------------------------------------
    ("npz-missing", lambda d, c: data_run("npz", d / "none.npz"), "none.npz"),
    (
        "csv-header-only",
        lambda d, c: data_run("table", write_csv(d / "h.csv", "a,b,label\n")),
        "h.csv has no rows",
    ),
    (
        "csv-one-class",
        lambda d, c: data_run("table", write_csv(d / "one.csv", "a,label\n1,x\n2,x\n3,x\n")),
        "column 'label': every sample has the label 'x'",
    ),
    (
        "csv-nan",
        lambda d, c: data_run("table", write_csv(d / "nan.csv", "a,label\n1,0\n,1\n3,0\n4,1\n")),
        "nan.csv",
    ),
    (
        "csv-text-feature",
        lambda d, c: data_run("table", write_csv(d / "t.csv", "a,label\nx,0\ny,1\n")),
        "['a'] are not numeric",
    ),
    (
        "csv-no-label-column",
        lambda d, c: data_run("table", write_csv(d / "nl.csv", "a,lbl\n1,0\n2,1\n")),
        "no label column 'label'",
    ),
    (
        "images-one-class",
        lambda d, c: data_run("image_folder", write_images(d / "imgs1", ["cat"])),
        "single class folder 'cat'",
    ),
    (
        "images-corrupt",
        lambda d, c: data_run("image_folder", write_images(d / "imgs2", ["a", "b"], True)),
        "broken.png",
    ),
    (
        "npz-length-mismatch",
        lambda d, c: data_run("npz", _npz(d / "m.npz", x=np.zeros((5, 3)), y=np.zeros(4))),
        "m.npz",
    ),
    (
        "npz-object-array",
        lambda d, c: data_run("npz", _npz(d / "o.npz", x=np.array([{}] * 4), y=np.zeros(4))),
        "o.npz",
    ),
    (
        "cifar-malicious-pickle",
        lambda d, c: data_run("cifar10", _evil_cifar(d / "cifar")),
        "data_batch_1",
    ),
    (
        "mnist-bad-magic",
        lambda d, c: data_run("mnist_idx", _bad_idx(d / "mnist")),
        "bad magic number",
    ),
    # --- checkpoints --------------------------------------------------------------------------
    ("ckpt-missing", lambda d, c: ["evaluate", str(d / "gone.safetensors")], "gone.safetensors"),
    (
        "ckpt-text-file",
        lambda d, c: ["evaluate", str(write_csv(d / "t.safetensors", "hello"))],
        "t.safetensors",
    ),
    (
        "ckpt-truncated",
        lambda d, c: ["evaluate", str(_truncate(c, d / "cut.safetensors"))],
        "cut.safetensors",
    ),
    (
        "ckpt-meta-not-json",
        lambda d, c: ["evaluate", str(rewrite(c, d / "nj.safetensors", lambda m: "{oops"))],
        "nj.safetensors: its metadata is not valid JSON",
    ),
    (
        "ckpt-meta-a-list",
        lambda d, c: ["evaluate", str(rewrite(c, d / "ls.safetensors", lambda m: [1, 2]))],
        "ls.safetensors: its metadata must be a JSON object",
    ),
    (
        "ckpt-no-model-key",
        lambda d, c: ["evaluate", str(rewrite(c, d / "nm.safetensors", drop("model")))],
        "nm.safetensors: its metadata has no model",
    ),
    (
        "ckpt-shape-a-string",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "s.safetensors", set_in("model.input_shape", "1x8x8"))),
        ],
        "model.input_shape: expected a list",
    ),
    (
        "ckpt-classes-a-number",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "k.safetensors", set_in("model.num_classes", "ten"))),
        ],
        "model.num_classes: expected an integer",
    ),
    (
        "ckpt-class-names-mismatch",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "cn.safetensors", set_in("class_names", ["a", "b"]))),
        ],
        "cn.safetensors: bad metadata: class_names",
    ),
    (
        "ckpt-bad-normaliser",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "n.safetensors", set_in("preprocessing.normalize.mean", "x"))),
        ],
        "preprocessing.normalize.mean",
    ),
    (
        "ckpt-bad-recipe",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "r.safetensors", set_in("recipe.train.epochz", 3))),
        ],
        "r.safetensors: its recipe is invalid: unknown key 'train.epochz'",
    ),
    (
        "ckpt-weights-do-not-fit",
        lambda d, c: [
            "evaluate",
            str(rewrite(c, d / "w.safetensors", set_in("model.kwargs", {"channels": [8, 8]}))),
        ],
        "w.safetensors does not fit the model",
    ),
    (
        "ckpt-torch-hub-factory",
        lambda d, c: [
            "evaluate",
            str(
                rewrite(
                    c,
                    d / "hub.safetensors",
                    set_in(
                        "model",
                        {
                            **_model_meta(c),
                            "name": "torch.hub:load",
                            "kwargs": {"repo_or_dir": ".", "source": "local"},
                        },
                    ),
                )
            ),
        ],
        "hub.safetensors names the model factory 'torch.hub:load'",
    ),
    (
        "quantize-hub-factory",
        lambda d, c: [
            "quantize",
            str(rewrite(c, d / "q.safetensors", set_in("model.name", "os:system"))),
        ],
        "--trust-code",
    ),
    (
        "compress-hub-factory",
        lambda d, c: [
            "compress",
            str(rewrite(c, d / "z.safetensors", set_in("model.name", "os:system"))),
        ],
        "z.safetensors names the model factory 'os:system'",
    ),
    (
        "compress-recipe-missing",
        lambda d, c: ["compress", str(c), "--recipe", str(d / "none.yaml")],
        "none.yaml",
    ),
    (
        "bench-truncated-onnx",
        lambda d, c: ["bench", str(c), "--onnx", str(_truncated_onnx(d / "cut.onnx"))],
        "cut.onnx is not a valid ONNX model",
    ),
    (
        "bench-text-as-onnx",
        lambda d, c: ["bench", str(c), "--onnx", str(write_csv(d / "m.onnx", "not onnx"))],
        "m.onnx",
    ),
    ("report-no-metrics", lambda d, c: ["report", str(d)], "no metrics.json"),
    (
        "report-garbage-metrics",
        lambda d, c: ["report", str(_garbage_metrics(d / "rundir"))],
        "metrics.json is not readable JSON",
    ),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _evil_cifar(root: Path) -> Path:
    root.mkdir()
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    return root


def _bad_idx(root: Path) -> Path:
    root.mkdir()
    for name in ("train", "t10k"):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            (root / f"{name}-{kind}").write_bytes(b"\x00\xbc\x61\x4e" + b"\x00" * 16)
    return root


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _model_meta(checkpoint: Path) -> dict[str, Any]:
    from dlforge.train import read_meta

    return dict(read_meta(checkpoint)["model"])


def _truncated_onnx(path: Path) -> Path:
    from dlforge.deploy import export_onnx

    export_onnx(torch.nn.Linear(3, 2), torch.randn(1, 3), path)
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _garbage_metrics(run_dir: Path) -> Path:
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{not json")
    return run_dir


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(
    case: str,
    build: Callable[[Path, Path], list[str]],
    expected: str,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.chdir(tmp_path)  # a relative runs/ would land here
    argv = build(files, trained)
    if argv[0] == "run":
        argv += ["--set", f"output_dir={tmp_path / 'runs'}"]
    before = sorted(p.relative_to(trained.parents[2]) for p in trained.parents[2].rglob("*"))
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code != 0, case
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dlforge {argv[0]}: error: "), err
    assert expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "a run folder was left behind"
    after = sorted(p.relative_to(trained.parents[2]) for p in trained.parents[2].rglob("*"))
    assert after == before, "the trained run folder changed"


def test_a_checkpoint_never_imports_its_factory_without_opt_in(
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The factory module is on the path and importable, yet nothing of it runs unless asked."""
    sentinel = tmp_path / "imported.txt"
    (tmp_path / "evil_factory.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(sentinel)!r}).write_text('module imported')\n"
        "from dlforge.models import create_model\n"
        "def build(input_shape, num_classes, **kw):\n"
        "    return create_model('cnn', input_shape, num_classes, **kw)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = rewrite(
        trained, tmp_path / "evil.safetensors", set_in("model.name", "evil_factory:build")
    )
    assert main(["-q", "evaluate", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "names the model factory 'evil_factory:build'" in err and "--trust-code" in err
    assert not sentinel.exists() and "evil_factory" not in sys.modules
    # With the opt-in the same file loads, through the user's own factory.
    assert main(["-q", "evaluate", str(ckpt), "--trust-code"]) == 0
    assert sentinel.read_text() == "module imported"
    sys.modules.pop("evil_factory", None)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", RECIPE, "--set", "train.epochs=-1"], "train.epochs: must be >= 1, got -1"),
        (["report", "/nonexistent/run"], "no metrics.json"),
    ],
)
def test_a_real_process_prints_one_line_and_no_traceback(argv: list[str], expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dlforge", *argv], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from dlforge.config import ConfigError

    with pytest.raises(ConfigError, match="train.epochs"):
        main(["--debug", "run", RECIPE, "--set", "train.epochs=-1"])
