"""Each schedule gives the same LRs as torch's own scheduler for the same settings."""

from __future__ import annotations

import pytest
import torch

from dlforge.train import LRSchedule, ScheduleConfig

BASE = 0.1
STEPS_PER_EPOCH = 7
EPOCHS = 12
TOTAL = STEPS_PER_EPOCH * EPOCHS


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE, momentum=0.9)


def ours(cfg: ScheduleConfig) -> list[float]:
    opt = optimizer()
    sched = LRSchedule(opt, cfg, STEPS_PER_EPOCH, TOTAL)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    return lrs


def torch_per_epoch(make) -> list[float]:
    opt = optimizer()
    sched = make(opt)
    lrs = []
    for _ in range(EPOCHS):
        lrs += [opt.param_groups[0]["lr"]] * STEPS_PER_EPOCH
        opt.step()
        sched.step()
    return lrs


def torch_per_step(make) -> list[float]:
    opt = optimizer()
    sched = make(opt)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step() -> None:
    ref = torch_per_epoch(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5))
    assert ours(ScheduleConfig(name="step", step_size=4, gamma=0.5)) == pytest.approx(
        ref, rel=1e-12
    )


def test_multistep() -> None:
    ref = torch_per_epoch(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 8], gamma=0.2))
    cfg = ScheduleConfig(name="multistep", milestones=[3, 8], gamma=0.2)
    assert ours(cfg) == pytest.approx(ref, rel=1e-12)


def test_cosine() -> None:
    ref = torch_per_step(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, TOTAL, eta_min=1e-3)
    )
    assert ours(ScheduleConfig(name="cosine", min_lr=1e-3)) == pytest.approx(ref, rel=1e-9)


def test_onecycle() -> None:
    ref = torch_per_step(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=BASE, total_steps=TOTAL, pct_start=0.25, cycle_momentum=False
        )
    )
    assert ours(ScheduleConfig(name="onecycle", pct_start=0.25)) == pytest.approx(ref, rel=1e-9)


def test_linear_warmup_then_constant() -> None:
    lrs = ours(ScheduleConfig(name="constant", warmup_steps=5))
    assert lrs[:6] == pytest.approx([BASE * k / 5 for k in (1, 2, 3, 4, 5)] + [BASE])


def test_warmup_then_cosine_ends_at_min_lr() -> None:
    lrs = ours(ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.0))
    assert lrs[9] == pytest.approx(BASE)
    assert max(lrs) == pytest.approx(BASE)
    assert lrs[-1] < 1e-3 * BASE


def test_plateau_matches_reduce_lr_on_plateau() -> None:
    metrics = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.8, 0.85, 0.86, 0.9, 0.87, 0.99]
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, patience=2, factor=0.5)
    opt = optimizer()
    sched = LRSchedule(
        opt, ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.5), 1, 12
    )
    for m in metrics:
        ref.step(m)
        sched.epoch_end({"val_loss": m})
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
    assert opt.param_groups[0]["lr"] < BASE  # it did reduce


def test_state_round_trip() -> None:
    cfg = ScheduleConfig(name="plateau", warmup_steps=3)
    opt = optimizer()
    a = LRSchedule(opt, cfg, 5, 50)
    for _ in range(4):
        a.step()
    for m in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        a.epoch_end({"val_loss": m})
    b = LRSchedule(optimizer(), cfg, 5, 50)
    b.load_state_dict(a.state_dict())
    assert b.lrs == a.lrs and b.state_dict() == a.state_dict()
