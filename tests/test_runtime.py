"""Data-parallel training under torchrun (gloo on CPU) against one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "ddp_target.py")


def torchrun(*args: str, check: bool = True) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         TARGET, *args],
        timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert not check or out.returncode == 0, out.stderr[-3000:]


def dlforge_run_under_torchrun(recipe: str, sets: list[str]) -> subprocess.CompletedProcess[str]:
    """``dlforge run RECIPE --set ...`` as 2 gloo processes; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "dlforge", "-q", "run", recipe, *[a for s in sets for a in ("--set", s)]],
        timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    target = str(HERE / "ddp_target.py")
    subprocess.run([sys.executable, target, str(one)], check=True, timeout=300)
    torchrun(str(two))
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    with safe_open(str(two), "pt") as fh:
        meta = fh.metadata()
    assert meta["processes"] == "2"
    with safe_open(str(one), "pt") as fh:  # the epoch loss, summed over both processes
        assert abs(float(fh.metadata()["loss"]) - float(meta["loss"])) < 1e-6


@pytest.mark.slow
def test_a_distributed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Checkpoints written by rank 0 (with every rank's RNG state, dropout included) resume
    under DDP to the weights of an uninterrupted DDP run."""
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    drop = ("--dropout", "0.3")
    torchrun(str(whole), "5", str(tmp_path / "run_a"), *drop)
    # Both processes die in epoch 4: the folder holds epoch 3's state, written by rank 0.
    torchrun(str(resumed), "5", str(tmp_path / "run_b"), *drop, "--cut", "4", check=False)
    assert not resumed.exists()
    torchrun(str(resumed), "5", str(tmp_path / "run_b"), "--resume", *drop)
    a, b = load_file(str(whole)), load_file(str(resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert (tmp_path / "run_b/checkpoints/last.state.safetensors").exists()


@pytest.mark.slow
def test_torchrun_run_with_a_stage_that_trains_after_training(tmp_path: Path) -> None:
    """After the distributed training the first process runs the later stages alone, and a
    stage that trains (here ensemble members) does not wait for processes that have left."""
    import json

    recipe = str(HERE.parent / "recipes/default.yaml")
    sets = [f"output_dir={tmp_path}", "train.epochs=2", "ensemble.enabled=true",
            "ensemble.members=2", "ensemble.bench=false", "report.enabled=false"]  # fmt: skip
    out = dlforge_run_under_torchrun(recipe, sets)
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    assert metrics["train"]["settings"]["processes"] == 2
    assert len(metrics["ensemble"]["rows"]) == 4
    assert out.stdout.count("Wrote") == 1  # one process reports


@pytest.mark.slow
def test_torchrun_with_a_class_balanced_sampler(tmp_path: Path) -> None:
    """The imbalance samplers shard over DDP processes: each process draws the same epoch and
    keeps its share, so the global epoch is the one-process epoch."""
    import json

    recipe = str(HERE.parent / "recipes/imbalance.yaml")
    sets = [f"output_dir={tmp_path}", "train.epochs=2", "train.loss.drw_epoch=1",
            "data.imbalance.sampler=balanced", "train.batch_size=60", "report.enabled=false"]  # fmt: skip
    dlforge_run_under_torchrun(recipe, sets)
    metrics = json.loads((tmp_path / "imbalance/metrics.json").read_text())
    assert metrics["train"]["settings"]["processes"] == 2
    assert metrics["evaluate"]["imbalance"]["sampler"] == "balanced"
    counts = metrics["data"]["train_class_counts"]
    drawn = metrics["train"]["sampler"]["counts_after"]  # one epoch: the mean count, each class
    assert drawn == [int(sum(counts) / len(counts))] * len(counts)
    per_rank = -(-sum(drawn) // 2)  # each process keeps half the epoch, in batches of 30
    assert len(metrics["train"]["steps"]["lr"]) == 2 * -(-per_rank // 30)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_torchrun_adversarial_training(tmp_path: Path, method: str) -> None:
    """The inner attack runs on the module under DDP (no reduction started by its forward
    passes); TRADES' clean and adversarial halves go through DDP in one forward."""
    import json

    recipe = str(HERE.parent / "recipes/default.yaml")
    sets = [f"output_dir={tmp_path}", "train.epochs=2", f"train.adversarial.method={method}",
            "train.adversarial.steps=2", "report.enabled=false"]  # fmt: skip
    dlforge_run_under_torchrun(recipe, sets)
    metrics = json.loads((tmp_path / "default/metrics.json").read_text())
    assert metrics["train"]["settings"]["processes"] == 2
    assert metrics["evaluate"]["summary"]["accuracy"] > 0.5
