"""Contract tests over every registered model, and the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlforge.config import ConfigError
from dlforge.models import ResNet, create_model, list_models, register_model

SHAPES = {"image": (3, 16, 16), "signal": (2, 40), "flat": (12,)}
# Models made for one kind of input; every other model takes images and signals.
ONLY = {"transformer": "signal", "rnn": "signal", "vit": "image"}


def cases():
    for name in list_models():
        for kind, shape in SHAPES.items():
            if kind == "flat" and name not in ("mlp", "logistic"):
                continue
            if ONLY.get(name, kind) != kind:
                continue
            yield pytest.param(name, shape, id=f"{name}-{kind}")


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n, only in ONLY.items() for k in SHAPES
                                            if k != only])  # fmt: skip
def test_models_for_one_input_kind_refuse_the_others(name: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} needs .* got shape"):
        create_model(name, SHAPES[kind], num_classes=5)


@pytest.mark.parametrize(("name", "shape"), list(cases()))
def test_model_contract(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, num_classes=5)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, 5)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"


def test_resnet_sizes_match_the_paper() -> None:
    # He et al. (2016), Table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M parameters.
    for depth, millions in ((20, 0.27), (32, 0.46), (56, 0.85)):
        n = sum(p.numel() for p in create_model(f"resnet{depth}", (3, 32, 32), 10).parameters())
        assert abs(n / 1e6 - millions) < 0.01
    proj = create_model("resnet20", (3, 32, 32), 10, shortcut="projection")
    assert sum(p.numel() for p in proj.parameters()) > 0.27e6  # 1x1 convs add parameters


def test_resnet_he_initialisation() -> None:
    torch.manual_seed(0)
    model = create_model("resnet56", (3, 32, 32), 10)
    assert isinstance(model, ResNet)
    conv = model.blocks[10].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    # With He init, batch norm and identity paths, a 56-layer net's output stays at a sane scale.
    assert model(torch.randn(8, 3, 32, 32)).std().item() < 10


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn")(lambda input_shape, num_classes: nn.Identity())
    with pytest.raises(ConfigError, match="unknown model 'resnet2'.*did you mean 'resnet"):
        create_model("resnet2", (3, 8, 8), 10)
    with pytest.raises(ConfigError, match="model 'cnn' has no argument 'chanels'.*'channels'"):
        create_model("cnn", (1, 8, 8), 10, chanels=[8])
    with pytest.raises(ConfigError, match="depth must be 6n"):
        create_model("resnet", (3, 8, 8), 10, depth=21)
    with pytest.raises(ConfigError, match="cannot import module"):
        create_model("no_such_pkg.mod:fn", (3, 8, 8), 10)


def test_user_factory_by_import_path() -> None:
    model = create_model("userzoo:tiny_net", (1, 8, 8), 10, hidden=7)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model[1].out_features == 7


def test_cnn_dimensionality_follows_input() -> None:
    assert any(isinstance(m, nn.Conv1d) for m in create_model("cnn", (1, 40), 10).modules())
    assert any(isinstance(m, nn.Conv2d) for m in create_model("cnn", (1, 8, 8), 10).modules())
    flat = create_model("cnn", (1, 40), 10, stride=[1, 2], pool="flatten", kernel_size=4)
    assert flat(torch.randn(2, 1, 40)).shape == (2, 10)


def test_fixed_depth_resnets_check_their_arguments() -> None:
    with pytest.raises(ConfigError, match="model 'resnet20' has no argument 'widht'.*'width'"):
        create_model("resnet20", (3, 8, 8), 10, widht=8)
    assert create_model("resnet32", (3, 8, 8), 10, width=8).fc.in_features == 32
