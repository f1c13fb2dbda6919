"""Data-parallel training under torchrun (gloo on CPU) against one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    target = str(HERE / "ddp_target.py")
    subprocess.run([sys.executable, target, str(one)], check=True, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", target, str(two)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    with safe_open(str(two), "pt") as fh:
        meta = fh.metadata()
    assert meta["processes"] == "2"
    with safe_open(str(one), "pt") as fh:  # the epoch loss, summed over both processes
        assert abs(float(fh.metadata()["loss"]) - float(meta["loss"])) < 1e-6
