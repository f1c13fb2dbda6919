"""The reshaped core: stages in one registry, recipes without torch, callbacks, steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dlforge.config import ConfigError
from dlforge.recipe import recipe_from_dict
from dlforge.train import Callback, OptimizerConfig, ScheduleConfig, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_loading_a_recipe_imports_no_torch() -> None:
    code = (
        "import sys; from dlforge.recipe import load_recipe; "
        f"load_recipe({str(ROOT / 'recipes/deep_compression.yaml')!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from dlforge.cli import build_parser; "
         "build_parser(); assert 'torch' not in sys.modules"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_stages_run_in_registry_order() -> None:
    from dlforge.recipe import Recipe
    from dlforge.stages import STAGES

    names = [s.name for s in STAGES]
    assert names == [
        "evaluate",
        "crossval",
        "ensemble",
        "robust",
        "compress",
        "quantize",
        "bench",
        "serve",
    ]
    fields = Recipe.__dataclass_fields__
    assert all(n in fields for n in names)  # every stage has its recipe section


def test_old_keys_say_what_to_write_instead() -> None:
    with pytest.raises(
        ConfigError, match=r"'compress\.prune\.epochs'.*'compress\.prune\.finetune\.epochs'"
    ):
        recipe_from_dict({"compress": {"prune": {"epochs": 3}}})
    with pytest.raises(ConfigError, match=r"'compress\.lr'.*compress\.<technique>\.finetune\.lr"):
        recipe_from_dict({"compress": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match=r"'quantize\.qat_epochs'.*'quantize\.qat\.epochs'"):
        recipe_from_dict({}, ["quantize.qat_epochs=2"])


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append("fit_start")

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.events.append("epoch_start")

    def on_train_batch_start(self, trainer: Trainer, batch: object, index: int) -> None:
        self.events.append("batch_start")

    def on_before_backward(self, trainer: Trainer, out: object) -> None:
        self.events.append("before_backward")

    def on_after_backward(self, trainer: Trainer) -> None:
        self.events.append("after_backward")

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        self.events.append("before_step")

    def on_train_batch_end(self, trainer: Trainer, out: object, index: int) -> None:
        self.events.append("batch_end")

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.events.append("validation_end")

    def on_train_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.events.append("epoch_end")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.events.append("fit_end")

    def state_dict(self) -> dict[str, int]:
        return {"seen": len(self.events)}


class DictData(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 4, generator=g)
        self.y = torch.arange(8) % 2

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": self.x[i], "label": self.y[i]}


def test_callback_events_in_order_with_dict_batches(tmp_path: Path) -> None:
    rec = Recorder()
    model = nn.Linear(4, 2)
    cfg = TrainConfig(epochs=2, progress=False, precision="fp32", accumulate_steps=2)
    loader = DataLoader(DictData(), batch_size=4)
    Trainer(model, cfg, callbacks=[rec], out_dir=tmp_path).fit(loader, loader)
    batch = ["batch_start", "before_backward", "after_backward"]
    one_epoch = (["epoch_start", *batch, "batch_end", *batch, "before_step", "batch_end",
                  "validation_end", "epoch_end"])  # fmt: skip
    assert rec.events == ["fit_start", *one_epoch, *one_epoch, "fit_end"]
    from dlforge.train import load_train_state

    state = load_train_state(tmp_path / "checkpoints/last.state.safetensors")
    assert state["callbacks"]["Recorder"] == {"seen": 1 + 2 * len(one_epoch)}


def test_l2_penalty_is_weight_decay_under_sgd_and_not_under_adam() -> None:
    def train(opt: OptimizerConfig, l2: float) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        loader = DataLoader(list(zip(x, (x[:, 0] > 0).long())), batch_size=16)
        cfg = TrainConfig(epochs=3, progress=False, precision="fp32", l2=l2, optimizer=opt,
                          schedule=ScheduleConfig(name="constant"))  # fmt: skip
        Trainer(model, cfg).fit(loader)
        return model

    sgd_l2 = train(OptimizerConfig(name="sgd", lr=0.1, momentum=0.0), 0.01)
    sgd_wd = train(OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.01), 0.0)
    for a, b in zip(sgd_l2.state_dict().values(), sgd_wd.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    adam_l2 = train(OptimizerConfig(name="adam", lr=0.01), 0.5)
    adamw = train(OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.5), 0.0)
    assert not torch.allclose(adam_l2[0].weight, adamw[0].weight, atol=1e-4)


def test_cyclic_cosine_equals_torch_warm_restarts() -> None:
    from dlforge.train import LRSchedule

    p = nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p], lr=0.1)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_opt, T_0=10)
    sched = LRSchedule(ours, ScheduleConfig(name="cyclic_cosine", cycles=3), 5, 30)
    for _ in range(30):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        sched.step()
        ref.step()
