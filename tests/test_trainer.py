"""The Trainer against a hand-written loop and against its own promises."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlforge.models import create_model
from dlforge.train import (
    EarlyStoppingConfig,
    GradMonitorConfig,
    NonFiniteLossError,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    param_groups,
    resolve_channels_last,
    resolve_precision,
)
from dlforge.train.precision import cpu_has_native_bf16


def toy_data(n: int = 256, d: int = 10, k: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def loader(ds: TensorDataset, batch: int = 32, shuffle: bool = True, seed: int = 0) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", (10,), 3, hidden=[32], dropout=dropout)


def fp32(**kw) -> TrainConfig:
    base = dict(
        precision="fp32",
        channels_last=False,
        progress=False,
        restore_best=False,
        optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_parity_with_hand_written_loop() -> None:
    """All extras off: the Trainer's weights equal a plain PyTorch loop's, bit for bit."""
    ds = toy_data()
    ref = mlp()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    batches = loader(ds)
    for _ in range(3):
        for x, y in batches:
            loss = F.cross_entropy(ref(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ours = mlp()
    Trainer(ours, fp32(epochs=3)).fit(loader(ds))
    for a, b in zip(ref.state_dict().values(), ours.state_dict().values()):
        assert torch.equal(a, b)


class PowerCut(nn.Module):
    """Wraps a model and raises on the ``at``-th training forward pass, like a crash."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.calls, self.at = inner, 0, at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt("power cut")
        return self.inner(x)


def test_exact_resume(tmp_path: Path) -> None:
    """Interrupted in epoch 3 and resumed: the same weights as 4 uninterrupted epochs."""
    ds = toy_data()  # 8 batches an epoch
    cfg = fp32(
        epochs=4,
        optimizer=OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.1),
        schedule=ScheduleConfig(name="cosine", warmup_steps=3),
    )
    full = PowerCut(mlp(dropout=0.3), at=-1)
    torch.manual_seed(7)  # dropout and shuffling draw from the global RNG and the loader's
    Trainer(full, cfg, out_dir=tmp_path / "a").fit(loader(ds))

    crashed = PowerCut(mlp(dropout=0.3), at=8 * 2 + 5)
    torch.manual_seed(7)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, cfg, out_dir=tmp_path / "b").fit(loader(ds))
    torch.manual_seed(999)  # a new process starts with other RNG state and other weights
    resumed = PowerCut(mlp(seed=5, dropout=0.3), at=-1)
    trainer = Trainer(resumed, cfg, out_dir=tmp_path / "b")
    history = trainer.fit(loader(ds, seed=42), resume=tmp_path / "b/checkpoints/last.safetensors")
    assert trainer.epoch == 4 and len(history.epochs) == 4
    assert any("resumed from" in e and "epoch 2" in e for e in history.events)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_mismatched_state(tmp_path: Path) -> None:
    ds = toy_data()
    Trainer(mlp(), fp32(epochs=2), out_dir=tmp_path).fit(loader(ds))
    last = tmp_path / "checkpoints/last.safetensors"
    state = last.with_suffix(".state.safetensors")
    state.unlink()
    with pytest.raises(Exception, match="no training state"):
        Trainer(mlp(), fp32(epochs=3), out_dir=tmp_path).fit(loader(ds), resume=last)


def test_gradient_accumulation_equals_large_batch() -> None:
    ds = toy_data()
    big, small = mlp(), mlp()
    Trainer(big, fp32(epochs=2)).fit(loader(ds, batch=64, shuffle=False))
    Trainer(small, fp32(epochs=2, accumulate_steps=2)).fit(loader(ds, batch=32, shuffle=False))
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("option", "measure"),
    [
        ("clip_grad_norm", lambda step: step.norm()),
        ("clip_grad_value", lambda step: step.abs().max()),
    ],
)
def test_clipping_bounds_the_update(option: str, measure) -> None:
    """Plain SGD with lr 1 moves the weights by exactly the clipped gradient."""
    ds = toy_data(n=32)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    sgd = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0)
    Trainer(model, fp32(epochs=1, optimizer=sgd, **{option: 1e-4})).fit(loader(ds, batch=32))
    step = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)])
    assert measure(step).item() == pytest.approx(1e-4, rel=1e-3)


def test_weight_decay_spares_biases_and_norms() -> None:
    model = create_model("cnn", (1, 8, 8), 10)  # convs without bias, batch norms, linear head
    groups = param_groups(model, OptimizerConfig(weight_decay=0.1))
    decay = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        should_decay = p.ndim > 1
        assert (id(p) in decay) == should_decay, name
    assert groups[1]["weight_decay"] == 0.0


def test_adamw_decouples_weight_decay_from_adam() -> None:
    """With zero gradients, AdamW still shrinks weights; Adam's L2 term is normalised away."""
    ds = TensorDataset(torch.zeros(8, 10), torch.zeros(8, dtype=torch.long))
    results = {}
    for name in ("adam", "adamw"):
        model = nn.Sequential(nn.Linear(10, 3, bias=False))
        nn.init.constant_(model[0].weight, 1.0)
        model[0].weight.register_hook(lambda g: torch.zeros_like(g))  # data gradient removed
        Trainer(
            model, fp32(epochs=1, optimizer=OptimizerConfig(name=name, lr=0.1, weight_decay=0.5))
        ).fit(loader(ds, batch=8))
        results[name] = model[0].weight.detach().mean().item()
    assert results["adamw"] == pytest.approx(1 - 0.1 * 0.5, rel=1e-6)  # w -= lr * wd * w
    assert results["adam"] == pytest.approx(1 - 0.1, rel=1e-3)  # Adam: the L2 grad is normalised


def test_label_smoothing_and_l1_enter_the_loss() -> None:
    ds = toy_data(n=32)
    model = mlp()
    x, y = ds.tensors
    decay = [p for p in model.parameters() if p.ndim > 1]
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2) + 1e-3 * sum(
        p.abs().sum() for p in decay
    )
    trainer = Trainer(model, fp32(epochs=1, label_smoothing=0.2, l1=1e-3))
    history = trainer.fit(loader(ds, batch=32, shuffle=False))
    assert history.steps["loss"][0] == pytest.approx(expected.item(), rel=1e-5)


class Exploding(nn.Module):
    """A model whose output turns NaN from the ``bad_step``-th forward pass in training."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.net = mlp()
        self.calls, self.bad_step = 0, bad_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_step:
                out = out * float("nan")
        return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    ds = toy_data(n=64)  # 2 batches an epoch: epoch 2 is clean, epoch 3 hits NaN
    model = Exploding(bad_step=6)
    trainer = Trainer(model, fp32(epochs=5), out_dir=tmp_path)
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at epoch 3, batch 2.*last good checkpoint kept"
    ):
        trainer.fit(loader(ds))
    last = tmp_path / "checkpoints/last.safetensors"
    meta = __import__("json").loads(last.with_suffix(".json").read_text())
    assert meta["epoch"] == 2
    from dlforge.train import load_weights

    restored = load_weights(last, Exploding(10**9))
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_nan_loss_skip_mode_skips_and_records() -> None:
    ds = toy_data(n=64)

    class Flaky(Exploding):
        def forward(self, x):  # only the 3rd training batch is bad
            out = self.net(x)
            if self.training:
                self.calls += 1
                if self.calls == 3:
                    out = out * float("nan")
            return out

    model = Flaky(0)
    history = Trainer(model, fp32(epochs=3, on_nonfinite="skip")).fit(loader(ds))
    assert len(history.epochs) == 3
    assert sum("skipped a step" in e for e in history.events) == 1
    assert history.epochs[1]["skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_and_best_checkpoint(tmp_path: Path) -> None:
    ds = toy_data()
    val = loader(toy_data(seed=1), shuffle=False)
    cfg = fp32(
        epochs=50,
        optimizer=OptimizerConfig(name="sgd", lr=0.5, momentum=0.9),
        early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=2),
        restore_best=True,
    )
    model = mlp()
    trainer = Trainer(model, cfg, out_dir=tmp_path)
    history = trainer.fit(loader(ds), val)
    assert len(history.epochs) < 50
    assert "early stop" in history.events[-1]
    best_epoch = history.best["epoch"]
    assert history.best["val_accuracy"] == max(e["val_accuracy"] for e in history.epochs)
    assert len(history.epochs) == best_epoch + 3  # patience 2: three epochs without improvement
    # The model ends with the best weights, which score the best accuracy again.
    assert trainer.evaluate_loss(val)["accuracy"] == pytest.approx(history.best["val_accuracy"])


class Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.first = nn.Linear(10, 16)
        self.last = nn.Linear(16, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.relu(self.first(x)) * self.scale)


def test_gradient_monitor_flags_vanishing_and_exploding() -> None:
    ds = toy_data(n=64)
    cfg = fp32(
        epochs=1,
        grad_monitor=GradMonitorConfig(every_n_steps=1, vanishing_below=1e-6, exploding_above=1e4),
        optimizer=OptimizerConfig(name="sgd", lr=1e-12, momentum=0.0),
    )
    tiny = Trainer(Scaled(1e-9), cfg).fit(loader(ds))
    assert tiny.grad_flags[0]["vanishing"] == ["first"]
    huge = Trainer(Scaled(1e7), cfg).fit(loader(ds))
    assert "last" in huge.grad_flags[0]["exploding"]
    assert set(tiny.grad_norms[0]) == {"first", "last"}


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu).dtype is None
    with pytest.raises(ValueError, match="fp16 training on CPU"):
        resolve_precision("fp16", cpu)
    assert resolve_channels_last("auto", create_model("cnn", (1, 8, 8), 10))
    assert not resolve_channels_last("auto", create_model("cnn", (1, 40), 10))
    assert not resolve_channels_last(False, create_model("cnn", (1, 8, 8), 10))


def test_bf16_mixed_precision_keeps_fp32_master_weights(digits) -> None:
    model = create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
    cfg = TrainConfig(
        epochs=4,
        precision="bf16",
        channels_last=True,
        progress=False,
        optimizer=OptimizerConfig(lr=3e-3),
    )
    trainer = Trainer(model, cfg)
    history = trainer.fit(
        digits.loader("train", 64, True, torch.Generator().manual_seed(0)),
        digits.loader("val", 256),
    )
    assert history.settings["precision"] == "bf16" and history.settings["channels_last"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history.epochs[-1]["val_accuracy"] > 0.8
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_lr_logged_per_step_follows_schedule() -> None:
    ds = toy_data()
    cfg = fp32(epochs=2, schedule=ScheduleConfig(name="cosine", warmup_steps=4))
    history = Trainer(mlp(), cfg).fit(loader(ds))
    lrs = history.steps["lr"]
    assert len(lrs) == 16
    assert lrs[:4] == pytest.approx([0.05 * k / 4 for k in (1, 2, 3, 4)])
    assert lrs[-1] < lrs[4]


def test_auto_precision_on_cuda_without_bf16_is_fp16_with_scaler(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = resolve_precision("auto", torch.device("cuda"))
    assert p.name == "fp16" and p.dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")).name == "bf16"
    with pytest.raises(ValueError, match="no bf16"):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        resolve_precision("bf16", torch.device("cuda"))


def test_deterministic_mode_is_scoped_and_reproducible() -> None:
    ds = toy_data()
    weights = []
    for _ in range(2):
        model = mlp(dropout=0.2)
        torch.manual_seed(3)
        Trainer(model, fp32(epochs=2, deterministic=True)).fit(loader(ds))
        weights.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values()))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after fit
