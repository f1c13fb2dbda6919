"""Adversarial training steps (PGD, TRADES, fast FGSM) in the Trainer: they make a model more
robust than standard training, resume exactly, and run from a recipe; the robust stage, the
``attack`` command and the compress/quantize robustness columns end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dlforge.data import DataBundle
from dlforge.robust.config import AdversarialConfig, RobustConfig
from dlforge.robust.evaluate import accuracy, craft, predict_of
from dlforge.robust.suite import build_space, probe
from dlforge.robust.training import AdversarialStep
from dlforge.train import OptimizerConfig, TrainConfig, Trainer
from dlforge.train.config import FineTune


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(data: DataBundle, step: AdversarialStep | None, epochs: int = 6) -> nn.Module:
    model = _mlp()
    cfg = TrainConfig(epochs=epochs, progress=False, optimizer=OptimizerConfig(lr=3e-3))
    kwargs = {"step": step} if step is not None else {}
    Trainer(model, cfg, **kwargs).fit(  # type: ignore[arg-type]
        data.loader("train", 64, True, torch.Generator().manual_seed(0))
    )
    return model.eval()


def _pgd_accuracy(model: nn.Module, data: DataBundle, eps: float) -> float:
    p = probe(data, RobustConfig(samples=0, steps=10), 0)
    wrapped = p.wrap(model)
    adv = craft("pgd", wrapped, p.x, p.y, eps, p.space, p.settings, torch.Generator())
    return accuracy(predict_of(wrapped), adv, p.y)


@pytest.fixture(scope="module")
def standard(digits: DataBundle) -> nn.Module:
    return _train(digits, None)


@pytest.mark.parametrize("method", ["pgd", "trades", "fast_fgsm"])
def test_adversarial_training_beats_standard_training_under_attack(
    digits: DataBundle, standard: nn.Module, method: str
) -> None:
    space = build_space(digits)
    cfg = AdversarialConfig(method=method, eps=0.15, steps=5)  # type: ignore[arg-type]
    robust = _train(digits, AdversarialStep(cfg, space))
    base, hard = _pgd_accuracy(standard, digits, 0.15), _pgd_accuracy(robust, digits, 0.15)
    assert hard > base + 0.2, (method, base, hard)


def test_eps_ramp_and_validation_on_attacked_inputs(
    digits: DataBundle, standard: nn.Module
) -> None:
    cfg = AdversarialConfig(method="pgd", eps=0.2, ramp_epochs=3)
    step = AdversarialStep(cfg, build_space(digits))
    assert [step.eps_at(e) for e in range(5)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    trainer = Trainer(standard, TrainConfig(epochs=1, progress=False), step=step)
    robust_val = trainer.evaluate_loss(digits.loader("val", 128))
    clean_val = Trainer(standard, TrainConfig(epochs=1, progress=False)).evaluate_loss(
        digits.loader("val", 128)
    )
    # validation on PGD inputs: the monitored accuracy is the robust one, far below the clean
    assert robust_val["accuracy"] < clean_val["accuracy"] - 0.3


class PowerCut(nn.Module):
    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt("power cut")
        out: torch.Tensor = self.inner(x)
        return out


def test_adversarial_training_resumes_exactly(digits: DataBundle, tmp_path: Path) -> None:
    """Killed mid-epoch and resumed: the random starts continue from the checkpointed
    generator, so the weights equal an uninterrupted run's."""
    small = DataBundle(
        (digits.train[0][:256], digits.train[1][:256]), digits.val, digits.test,
        digits.class_names, digits.preprocessing,
    )  # fmt: skip
    cfg = TrainConfig(epochs=3, progress=False)
    adv = AdversarialConfig(method="fast_fgsm", eps=0.1, select_on="clean")
    space = build_space(digits)

    def run(out: str, cut: int) -> tuple[nn.Module, list[str]]:
        model = PowerCut(_mlp(), at=cut)
        trainer = Trainer(model, cfg, step=AdversarialStep(adv, space, seed=1),
                          out_dir=tmp_path / out)  # fmt: skip
        last = tmp_path / out / "checkpoints/last.safetensors"
        history = trainer.fit(small.loader("train", 64, True, torch.Generator().manual_seed(0)),
                              resume=last if last.exists() else None)  # fmt: skip
        return model, history.events

    full, _ = run("a", cut=-1)
    with pytest.raises(KeyboardInterrupt):
        # 4 batches an epoch, two training-mode forwards a batch (the FGSM step's and the
        # update's): the cut lands in the second epoch's third batch.
        run("b", cut=8 + 5)
    assert (tmp_path / "b/checkpoints/last.safetensors").exists()
    resumed, events = run("b", cut=-1)
    assert any("resumed from" in e for e in events)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_integer_inputs_are_refused_before_training(tmp_path: Path) -> None:
    from dlforge.data.dataset import DataBundle as Bundle
    from dlforge.robust.space import NotAttackableError

    tokens = torch.randint(0, 50, (8, 12))
    data = Bundle((tokens, torch.zeros(8, dtype=torch.long)), (tokens, torch.zeros(8)),
                  (tokens, torch.zeros(8)), ["a", "b"])  # fmt: skip
    with pytest.raises(NotAttackableError, match="training split.*token ids"):
        build_space(data)


ROOT = Path(__file__).resolve().parents[1]
SMALL_ROBUST = [
    "robust.enabled=true", "robust.samples=40", "robust.steps=5", "robust.cw_steps=10",
    "robust.square_queries=30", "robust.examples=2", "robust.attacks=[fgsm,pgd,deepfool,square]",
]  # fmt: skip


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_recipe_trains_adversarially_and_reports_robustness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlforge.cli import main

    sets = [f"output_dir={tmp_path}", "train.epochs=2", "train.adversarial.method=fast_fgsm",
            "train.adversarial.eps=0.1", *SMALL_ROBUST]  # fmt: skip
    assert main(["-q", "run", str(ROOT / "recipes/default.yaml"), *_sets(sets)]) == 0
    run_dir = tmp_path / "default"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rb = metrics["robust"]
    assert rb["samples"] == 40 and set(rb["curves"]) == {"fgsm", "pgd", "deepfool", "square"}
    assert rb["curves"]["pgd"]["accuracy"][0] == pytest.approx(rb["clean_accuracy"])
    assert set(rb["corruptions"]) == {"gaussian_noise", "blur", "contrast", "shift"}
    assert len(rb["sanity"]) == 7  # 4 curves, PGD vs FGSM, Square vs PGD, large ε
    html = (run_dir / "report.html").read_text()
    assert "Adversarial robustness and corruptions" in html
    assert metrics["recipe"]["train"]["adversarial"]["method"] == "fast_fgsm"
    settings = metrics["train"]["settings"]  # the report says what val accuracy means here
    assert (
        "PGD-7 inputs" in settings["validation"] and "fast_fgsm" in settings["adversarial training"]
    )
    out = capsys.readouterr().out
    assert "pgd" in out and "severity 0-5" in out

    # The attack command on the checkpoint: the same stage, its own settings, robust.json.
    checkpoint = run_dir / "checkpoints/best.safetensors"
    args = ["-q", "attack", str(checkpoint), "--attacks", "fgsm,pgd", "--eps", "0,0.1,0.3",
            "--samples", "30", "--set", "robust.corruptions=false"]  # fmt: skip
    assert main(args) == 0
    again = json.loads((run_dir / "robust.json").read_text())
    assert again["curves"]["pgd"]["eps"] == [0.0, 0.1, 0.3] and again["samples"] == 30
    assert "corruptions" not in again
    assert json.loads((run_dir / "metrics.json").read_text())["robust"]["samples"] == 30


def test_compress_and_quantize_tables_carry_robustness(
    digits: DataBundle, small_cnn: nn.Module, tmp_path: Path
) -> None:
    from dlforge.stages.compress import CompressConfig, compress_stage
    from dlforge.stages.quantize import QuantizeStageConfig, quantize_stage

    p = probe(digits, RobustConfig(samples=60, steps=5, square_queries=40), 0)
    cfg = CompressConfig(techniques=["lowrank"], bench_rounds=1,
                         lowrank={"finetune": {"epochs": 1}})  # type: ignore[arg-type]  # fmt: skip
    cz = compress_stage(small_cnn, digits, cfg, tmp_path / "c", "cnn", {"channels": [16, 32]}, p)
    rows = {r["variant"]: r for r in cz["rows"]}
    assert "transfer_accuracy" not in rows["baseline"] and "transfer_accuracy" in rows["lowrank"]
    assert cz["robust"]["eps"] == pytest.approx(0.1)
    clean = accuracy(predict_of(p.wrap(small_cnn)), p.x, p.y)  # on the probe's own samples
    assert rows["baseline"]["pgd_accuracy"] < clean - 0.1

    qz = quantize_stage(small_cnn, digits, QuantizeStageConfig(enabled=True), tmp_path / "q", p)
    q = {r["variant"]: r for r in qz["robust"]["rows"]}
    # fp32 in ONNX Runtime is the same function as fp32 in PyTorch: PGD inputs crafted on the
    # one transfer exactly, so its transfer accuracy is PyTorch's white-box accuracy.
    assert q["fp32 (ONNX Runtime)"]["transfer_accuracy"] == pytest.approx(
        q["fp32 (PyTorch)"]["pgd_accuracy"], abs=1 / 60 + 1e-9
    )
    int8 = q["int8 (ONNX Runtime)"]
    assert int8["clean_accuracy"] == pytest.approx(clean, abs=2 / 60 + 1e-9)  # int8 ≈ fp32
    # ε = 0.1 takes the fp32 model well down (PGD above); the black-box attack on the int8
    # model, with no gradients, must get a real share of the way too.
    assert int8["square_accuracy"] < int8["clean_accuracy"] - 0.1


def test_compressed_variants_fine_tune_adversarially_after_adversarial_training(
    digits: DataBundle, small_cnn: nn.Module, tmp_path: Path
) -> None:
    from dlforge.recipe import load_recipe
    from dlforge.stages.compress import CompressConfig, adversarial_step, compress_stage

    recipe = load_recipe(None, ["train.adversarial.method=fast_fgsm",
                                "train.adversarial.ramp_epochs=5"])  # fmt: skip
    make = adversarial_step(recipe, digits)
    assert make is not None and isinstance(make(FineTune()), AdversarialStep)
    off = load_recipe(
        None, ["train.adversarial.method=fast_fgsm", "compress.adversarial_finetune=false"]
    )
    assert adversarial_step(off, digits) is None
    assert adversarial_step(load_recipe(None), digits) is None  # not trained adversarially

    calls: list[int] = []  # batches each built step was used for

    class Counting(AdversarialStep):
        def __call__(self, model: nn.Module, batch: Any, trainer: Any) -> Any:
            calls[self.index] += 1
            return super().__call__(model, batch, trainer)

    def counting(ft: Any) -> AdversarialStep:
        step = make(ft)
        assert step.label_smoothing == ft.label_smoothing  # the fine-tuning's own setting
        assert step.cfg.ramp_epochs == 0  # a fine-tuning starts at the full ε
        step.__class__ = Counting
        step.index = len(calls)  # type: ignore[attr-defined]
        calls.append(0)
        return step

    cfg = CompressConfig(techniques=["prune", "lowrank", "deep_compression"], bench_rounds=1,
                         prune={"finetune": {"epochs": 1, "label_smoothing": 0.1}},
                         lowrank={"finetune": {"epochs": 1}},
                         deep_compression={"finetune": {"epochs": 1},
                                           "codebook": {"epochs": 1}})  # type: ignore[arg-type]  # fmt: skip
    cz = compress_stage(small_cnn, digits, cfg, tmp_path, "cnn", {"channels": [16, 32]},
                        make_step=counting)  # fmt: skip
    # prune, low-rank, and Deep Compression's two fine-tunings: each its own step, each used
    assert len(calls) == 4 and all(n > 0 for n in calls), calls
    assert "adversarial" in cz["notes"]["fine_tuning"]
