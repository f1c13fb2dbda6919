"""A kill at any instant leaves a run that resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig, Trainer
from dlforge.train import trainer as trainer_module
from dlforge.train.checkpoint import TEMP_MARK

ROOT = Path(__file__).resolve().parents[1]


def _strays(folder: Path) -> list[Path]:
    return list(folder.rglob(f".*{TEMP_MARK}*.tmp"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- random SIGKILLs of a real training process -------------------------------------------


def _train_args(out: Path) -> list[str]:
    # A wide MLP on a tenth of the digits: its 85 MB of checkpoint files per epoch take longer
    # to write than the epoch takes to train, so random kills often land inside a write.
    sets = [
        f"output_dir={out}",
        "train.epochs=8",
        "data.test_fraction=0.8",
        "data.val_fraction=0.1",
        "model.name=mlp",
        "model.kwargs={hidden: [2048, 2048]}",
        "train.optimizer.name=sgd",
        "train.optimizer.lr=0.05",
        "train.schedule.name=cosine",
    ]
    return ["-q", "train", str(ROOT / "recipes/default.yaml"), "--resume",
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip


def _start(ctx: Any, out: Path) -> Any:
    import crash_target

    proc = ctx.Process(target=crash_target.train, args=(_train_args(out),))
    proc.start()
    return proc


@pytest.mark.slow
def test_random_kills_then_resume_give_bit_identical_weights(tmp_path: Path) -> None:
    """24 SIGKILLs at random instants of `dlforge train --resume`, each followed by a resume."""
    ctx = multiprocessing.get_context("forkserver")
    # Everything `dlforge train` imports, so that each restart costs a fork, not the imports.
    ctx.set_forkserver_preload([
        "torch", "sklearn.datasets", "dlforge.pipeline", "dlforge.train.trainer",
        "dlforge.data.load", "dlforge.stages.train", "dlforge.models.mlp", "dlforge.models.cnn",
        "dlforge.models.resnet", "crash_target",
    ])  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    warm = ctx.Process(target=time.sleep, args=(0,))  # start the server: imports are not timed
    warm.start()
    warm.join()

    t0 = time.perf_counter()
    proc = _start(ctx, reference)
    proc.join(300)
    assert proc.exitcode == 0
    duration = time.perf_counter() - t0

    rng = random.Random(0)
    kills = mid_write = restarts = 0
    while kills < 24:
        restarts += 1
        assert restarts < 200, "the run made no progress between kills"
        proc = _start(ctx, killed)
        proc.join(rng.uniform(0.05, duration))
        if proc.exitcode is not None:  # it finished before the kill: start the next cycle over
            assert proc.exitcode == 0
            # Finished runs stay finished; remove them so that later kills still hit training.
            for p in sorted(killed.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            continue
        proc.kill()  # SIGKILL: no handler, no clean-up
        proc.join()
        kills += 1
        mid_write += bool(_strays(killed))
    proc = _start(ctx, killed)  # the last resume runs to the end
    proc.join(300)
    assert proc.exitcode == 0
    assert not _strays(killed), "stray temporary files were not removed on resume"

    for name in ("best", "last"):
        ref = load_file(str(reference / f"default/checkpoints/{name}.safetensors"))
        got = load_file(str(killed / f"default/checkpoints/{name}.safetensors"))
        assert _same(ref, got), f"{name} weights differ after {kills} kills"
    epochs = json.loads((killed / "default/metrics.json").read_text())["train"]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    print(f"{kills} kills ({mid_write} inside a write) over {restarts} starts")
    assert mid_write >= 1, "no kill landed inside a checkpoint write: the test proved nothing"


# --- a crash at each point of the end-of-epoch writes ---------------------------------------


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(1))  # fmt: skip


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


CFG = TrainConfig(
    epochs=4,
    precision="fp32",
    progress=False,
    optimizer=OptimizerConfig(name="adamw", lr=0.02, weight_decay=0.1),
    schedule=ScheduleConfig(name="cosine", warmup_steps=2),
    early_stopping={"monitor": "val_accuracy"},  # type: ignore[arg-type]
)


def _fit(out: Path, resume: bool = False) -> nn.Module:
    torch.manual_seed(123)  # dropout draws from the global generator
    model = _model()
    last = out / "checkpoints/last.safetensors"
    Trainer(model, CFG, out_dir=out).fit(
        _data(),
        _data(),
        resume=last if resume and last.with_suffix(".state.safetensors").exists() else None,
    )
    return model


def _crash_on_call(target: str, n: int, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Make the n-th call of trainer_module.<target> die before it writes anything."""
    real = getattr(trainer_module, target)
    calls = {"n": 0}

    def dying(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt(f"killed in call {n} of {target}")
        return real(*args, **kw)

    monkeypatch.setattr(trainer_module, target, dying)
    return lambda: calls["n"]


# 4 epochs: 4 state writes; each epoch writes last and, when it improved, best first.
@pytest.mark.parametrize(
    ("target", "n"),
    [("save_train_state", n) for n in range(1, 5)] + [("save_checkpoint", n) for n in range(1, 7)],
)
def test_a_crash_between_any_two_writes_resumes_exactly(
    target: str, n: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _fit(tmp_path / "ref")
    with monkeypatch.context() as m:
        _crash_on_call(target, n, m)
        with pytest.raises(KeyboardInterrupt):
            _fit(tmp_path / "run")
    # A kill inside a write leaves its temporary file; the resume must clear it.
    stray = tmp_path / f"run/checkpoints/.last.state.safetensors{TEMP_MARK}x1y2.tmp"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a file")
    resumed = _fit(tmp_path / "run", resume=True)
    assert not stray.exists()
    assert _same(reference.state_dict(), resumed.state_dict())
    for name in ("best", "last"):
        ref = load_file(str(tmp_path / f"ref/checkpoints/{name}.safetensors"))
        got = load_file(str(tmp_path / f"run/checkpoints/{name}.safetensors"))
        assert _same(ref, got), name


def test_checkpoints_get_the_mode_of_every_other_output(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _fit(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "checkpoints").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_augmented_training_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Augmentation draws are seeded by epoch and batch: a resume repeats them exactly."""
    from dlforge.data.augment import BatchAugment
    from dlforge.data.config import AugmentConfig, MixConfig
    from dlforge.train import ClassificationStep

    def fit(out: Path, resume: bool = False) -> nn.Module:
        torch.manual_seed(123)
        model = _model()
        aug = BatchAugment(AugmentConfig(table_noise=0.3, mix=MixConfig(mixup_alpha=0.4)), 2)
        last = out / "checkpoints/last.safetensors"
        Trainer(model, CFG, out_dir=out, step=ClassificationStep(augment=aug)).fit(
            _data(), _data(), resume=last if resume else None
        )
        return model

    reference = fit(tmp_path / "ref")
    with monkeypatch.context() as m:
        _crash_on_call("save_checkpoint", 3, m)
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "run")
    resumed = fit(tmp_path / "run", resume=True)
    assert _same(reference.state_dict(), resumed.state_dict())


def test_an_early_stopped_run_stays_stopped_on_resume(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=30, precision="fp32", progress=False,
                      optimizer=OptimizerConfig(name="adamw", lr=0.05),
                      early_stopping={"monitor": "val_loss", "patience": 1})  # type: ignore[arg-type]  # fmt: skip
    torch.manual_seed(0)
    first = Trainer(_model(), cfg, out_dir=tmp_path)
    history = first.fit(_data(), _data())
    assert first.should_stop and len(history.epochs) < 30
    again = Trainer(_model(), cfg, out_dir=tmp_path)
    again.fit(_data(), _data(), resume=tmp_path / "checkpoints/last.safetensors")
    assert again.steps_this_fit == 0 and len(again.history.epochs) == len(history.epochs)


def test_gradual_pruning_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saved weights carry the pruning masks: a resume puts masks back before loading."""
    from dlforge.compress.prune import GradualPruner, sparsity

    def fit(out: Path, resume: bool = False) -> nn.Module:
        torch.manual_seed(123)
        model = _model()
        last = out / "checkpoints/last.safetensors"
        Trainer(model, CFG, out_dir=out, callbacks=[GradualPruner(0.8, 0, 2)]).fit(
            _data(), _data(), resume=last if resume else None
        )
        return model

    reference = fit(tmp_path / "ref")
    with monkeypatch.context() as m:
        _crash_on_call("save_train_state", 3, m)  # dies after two epochs, masks in the state
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "run")
    resumed = fit(tmp_path / "run", resume=True)
    assert _same(reference.state_dict(), resumed.state_dict())
    assert sparsity(resumed)["global"] == pytest.approx(0.8, abs=0.01)
