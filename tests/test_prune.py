"""Unstructured pruning against torch.nn.utils.prune, and its behaviour through fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from dlforge.compress.prune import (
    GradualPruner,
    MagnitudePrune,
    cubic_sparsity,
    iterative_prune,
    magnitude_prune,
    make_permanent,
    sparsity,
)
from dlforge.models import create_model
from dlforge.train import OptimizerConfig, TrainConfig, Trainer


def layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_global_magnitude_matches_torch(amount: float) -> None:
    torch.manual_seed(0)
    ours = create_model("resnet20", (3, 16, 16), 10)
    ref = copy.deepcopy(ours)
    magnitude_prune(ours, MagnitudePrune(amount=amount, scope="global"))
    torch_prune.global_unstructured(
        layers(ref), pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    for (a, _), (b, _) in zip(layers(ours), layers(ref)):
        assert torch.equal(a.weight == 0, b.weight_mask == 0)
    assert sparsity(ours)["global"] == pytest.approx(amount, abs=1e-4)


def test_layerwise_and_threshold() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", (1, 8, 8), 10)
    ref = copy.deepcopy(model)
    magnitude_prune(model, MagnitudePrune(amount=0.5, scope="layer"))
    for (a, _), (b, _) in zip(layers(model), layers(ref)):
        torch_prune.l1_unstructured(b, "weight", amount=0.5)
        assert torch.equal(a.weight == 0, b.weight_mask == 0)
    model = create_model("mlp", (10,), 3)
    magnitude_prune(model, MagnitudePrune(amount=None, threshold=0.05))
    for m, _ in layers(model):
        w = m.parametrizations.weight.original
        assert torch.equal(m.weight == 0, w.abs() <= 0.05)
    with pytest.raises(ValueError, match="exactly one of amount or threshold"):
        magnitude_prune(model, MagnitudePrune(amount=0.5, threshold=0.1))
    with pytest.raises(ValueError, match="no weight matrix named"):
        magnitude_prune(model, MagnitudePrune(layers=["nope"]))


def test_masks_hold_through_fine_tuning_and_become_permanent(digits) -> None:
    torch.manual_seed(0)
    model = create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
    magnitude_prune(model, MagnitudePrune(amount=0.8))
    zeros = {
        n: (m.weight == 0).clone()
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }
    cfg = TrainConfig(
        epochs=2, progress=False, optimizer=OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1)
    )
    Trainer(model, cfg).fit(digits.loader("train", 64, True, torch.Generator().manual_seed(0)))
    for n, m in model.named_modules():
        if n in zeros:
            assert torch.all(m.weight[zeros[n]] == 0)  # pruned weights stayed zero
    make_permanent(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert sparsity(model)["global"] == pytest.approx(0.8, abs=1e-3)
    assert "0.weight" in model.state_dict()  # a plain checkpoint again


def test_cubic_schedule_and_gradual_pruning(digits) -> None:
    assert cubic_sparsity(0, 0, 10, 0.9) == 0.0
    assert cubic_sparsity(10, 0, 10, 0.9) == 0.9
    assert cubic_sparsity(5, 0, 10, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    torch.manual_seed(0)
    model = create_model("cnn", digits.input_shape, digits.num_classes, channels=[16, 32])
    pruner = GradualPruner(final=0.9, start_epoch=0, end_epoch=3)
    cfg = TrainConfig(epochs=8, progress=False, optimizer=OptimizerConfig(lr=1e-2))
    trainer = Trainer(model, cfg, on_train_epoch_start=pruner)
    history = trainer.fit(
        digits.loader("train", 64, True, torch.Generator().manual_seed(0)),
        digits.loader("val", 256),
    )
    assert [round(s, 4) for _, s in pruner.history] == [
        0.0,
        round(0.9 * (1 - (2 / 3) ** 3), 4),
        round(0.9 * (1 - (1 / 3) ** 3), 4),
    ] + [0.9] * 5
    assert sparsity(model)["global"] == pytest.approx(0.9, abs=1e-3)
    assert history.epochs[-1]["val_accuracy"] > 0.8  # still learns while being pruned
    # for_epochs: the ramp ends at the chosen share of the run, leaving the rest to recover
    ramp = GradualPruner.for_epochs(0.9, epochs=20, share=0.5)
    assert (ramp.start, ramp.end) == (0, 10)
    with pytest.raises(ValueError, match="share"):
        GradualPruner.for_epochs(0.9, epochs=20, share=0)


def test_iterative_prune_reaches_the_target(digits) -> None:
    torch.manual_seed(0)
    model = create_model("mlp", digits.input_shape, digits.num_classes, hidden=[64])
    cfg = TrainConfig(epochs=1, progress=False, optimizer=OptimizerConfig(lr=3e-3))
    log = iterative_prune(
        model, digits.loader("train", 64, True, torch.Generator().manual_seed(0)), 0.9, 3, cfg
    )
    assert [round(r["sparsity"], 2) for r in log] == [
        round(1 - 0.1 ** (1 / 3), 2),
        round(1 - 0.1 ** (2 / 3), 2),
        0.9,
    ]


def test_gradual_pruning_with_validation_returns_the_scheduled_sparsity(small_cnn, digits) -> None:
    """Best-weights restoring must not bring back a less-pruned epoch (here the unpruned model
    had the best validation loss, and its state dict does not even have the mask keys)."""
    model = copy.deepcopy(small_cnn)
    pruner = GradualPruner(final=0.95, start_epoch=1, end_epoch=3)
    cfg = TrainConfig(epochs=4, progress=False, optimizer=OptimizerConfig(lr=1e-4))
    history = Trainer(model, cfg, on_train_epoch_start=pruner).fit(
        digits.loader("train", 64, True, torch.Generator().manual_seed(0)),
        digits.loader("val", 256),
    )
    assert sparsity(model)["global"] == pytest.approx(0.95, abs=1e-3)
    assert history.best["epoch"] >= 4  # only epochs at the final sparsity could be the best


class GruAttention(nn.Module):  # torch's own recurrent and attention layers
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1))


def test_every_weight_matrix_is_pruned_recurrent_and_packed_attention_included() -> None:
    torch.manual_seed(0)
    model = GruAttention()
    x = torch.randn(4, 5, 8)
    magnitude_prune(model, MagnitudePrune(amount=0.9))
    share = sparsity(model)
    names = ["gru.weight_ih_l0", "gru.weight_hh_l0", "attn.in_proj_weight", "attn.out_proj", "head"]
    assert sorted(share["layers"]) == sorted(names)
    assert share["left_out"] == []
    assert share["global"] == pytest.approx(0.9, abs=1e-3)
    # The masked GRU and attention compute what the same modules with zeroed weights compute.
    zeroed = copy.deepcopy(model)
    make_permanent(zeroed)
    assert not any(hasattr(m, "parametrizations") for m in zeroed.modules())
    assert torch.allclose(model(x), zeroed(x), atol=1e-6)
    assert float((zeroed.attn.in_proj_weight == 0).float().mean()) > 0.5
    # Pruned entries of the recurrent matrices stay zero through training.
    before = model.gru.weight_hh_l0 == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert torch.all(model.gru.weight_hh_l0[before] == 0)


def test_sparsity_names_the_weights_pruning_leaves_out() -> None:
    class Scaled(nn.Module):  # a user's layer with its own weight matrix
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    model = nn.Sequential(nn.Linear(8, 16), Scaled(), nn.Linear(16, 3))
    magnitude_prune(model, MagnitudePrune(amount=0.9))
    share = sparsity(model)
    assert share["left_out"] == ["1.weight"]
    # By hand: every parameter, the masked layers counted by their effective (masked) weight.
    effective = [model[0].weight, model[0].bias, model[1].weight, model[2].weight, model[2].bias]
    zeros = sum(int((t == 0).sum()) for t in effective)
    total = sum(t.numel() for t in effective)
    assert total == sum(p.numel() for p in model.parameters())
    assert share["all_parameters"] == pytest.approx(zeros / total)
    assert share["all_parameters"] < 0.5  # the honest figure for this model
