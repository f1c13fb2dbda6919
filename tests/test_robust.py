"""Attacks against the torchattacks reference and closed-form results, the gradient-masking
sanity checks, attacks on recurrent and attention models, and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlforge.data import DataBundle
from dlforge.robust.attacks import carlini_wagner, deepfool, fgsm, pgd
from dlforge.robust.evaluate import AttackSettings, robustness_curves, sanity_checks
from dlforge.robust.space import InRawUnits, NotAttackableError, input_space

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def setup(digits: DataBundle, small_cnn: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The digits CNN reading raw [0, 1] pixels, and the training split in raw units (1077
    samples: enough that 0.5 points is a few samples)."""
    space = input_space(digits.preprocessing, digits.train[0])
    assert (space.lo, space.hi) == (0.0, 1.0)  # digits are 0-16 scaled to [0, 1]
    x, y = digits.train
    return InRawUnits(small_cnn, space).eval(), space.clip(space.to_raw(x)), y


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_fgsm_and_pgd_match_torchattacks(setup: tuple) -> None:
    model, x, y = setup
    for eps in (0.05, 0.1):
        ours = fgsm(model, x, y, eps, lo=0, hi=1)
        ref = torchattacks.FGSM(model, eps=eps)(x, y)
        assert (ours - ref).abs().max() < 1e-6
        ours = pgd(model, x, y, eps, steps=10, alpha=eps / 4, random_start=False, lo=0, hi=1)
        ref = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
        assert (ours - ref).abs().max() < 1e-6  # the same perturbation, step for step
        assert abs(_acc(model, ours, y) - _acc(model, ref, y)) < 1e-9
    # L2 without a random start: the same perturbation too.
    ours = pgd(model, x, y, 1.0, norm="l2", steps=10, alpha=0.25, random_start=False, lo=0, hi=1)
    ref = torchattacks.PGDL2(model, eps=1.0, alpha=0.25, steps=10, random_start=False)(x, y)
    assert (ours - ref).abs().max() < 1e-5


def test_pgd_random_start_agrees_with_torchattacks(setup: tuple) -> None:
    model, x, y = setup
    eps = 0.1
    ours = _acc(model, pgd(model, x, y, eps, steps=20, alpha=eps / 8, lo=0, hi=1,
                           generator=torch.Generator().manual_seed(0)), y)  # fmt: skip
    torch.manual_seed(0)
    ref = _acc(model, torchattacks.PGD(model, eps=eps, alpha=eps / 8, steps=20)(x, y), y)
    assert 0.05 < ref < 0.9  # a budget where the comparison means something
    assert abs(ours - ref) <= 0.005


def test_restarts_and_steps_only_strengthen_pgd(setup: tuple) -> None:
    model, x, y = setup
    x, y = x[:300], y[:300]
    g = torch.Generator().manual_seed(1)
    one = _acc(model, pgd(model, x, y, 0.08, steps=5, lo=0, hi=1, generator=g), y)
    more = _acc(model, pgd(model, x, y, 0.08, steps=5, restarts=4, lo=0, hi=1, generator=g), y)
    fg = _acc(model, fgsm(model, x, y, 0.08, lo=0, hi=1), y)
    assert more <= one and one <= fg + 0.01


def test_budget_and_bounds_hold(setup: tuple) -> None:
    model, x, y = setup
    x, y = x[:64], y[:64]
    adv = pgd(model, x, y, 0.1, lo=0, hi=1)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    adv = pgd(model, x, y, 0.7, norm="l2", lo=0, hi=1)
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.7 + 1e-5


def _linear_pair(d: int = 20) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-class linear model: the distance to its boundary is |f(x)| / ||w1 - w0||."""
    torch.manual_seed(3)
    model = nn.Linear(d, 2)
    x = torch.randn(40, d)
    with torch.no_grad():
        logits = model(x)
        y = logits.argmax(1)
        w = model.weight[1] - model.weight[0]
        exact = (logits[:, 1] - logits[:, 0]).abs() / w.norm()
    return model, x, y, exact


def test_deepfool_finds_the_exact_distance_of_a_linear_model() -> None:
    model, x, y, exact = _linear_pair()
    found = deepfool(model, x, y, overshoot=0.0)
    assert bool(found.success.all())
    assert torch.allclose(found.norms, exact, rtol=1e-3, atol=1e-3)


def test_carlini_wagner_is_near_the_optimum_and_never_below_it() -> None:
    model, x, y, exact = _linear_pair()
    found = carlini_wagner(model, x, y, steps=200, lr=0.05, binary_steps=8)
    assert bool(found.success.all())
    assert bool((found.norms >= exact - 1e-4).all())  # nothing beats the optimum
    assert float((found.norms / exact).median()) < 1.1
    assert found.accuracy_at(float(exact.median())) == pytest.approx(0.5, abs=0.05)


@pytest.mark.slow
def test_deepfool_and_cw_on_the_cnn_agree_with_torchattacks(setup: tuple) -> None:
    model, x, y = setup
    x, y = x[:64], y[:64]
    ours = deepfool(model, x, y, lo=0, hi=1)
    ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    ref_norms = (ref - x).flatten(1).norm(dim=1)
    assert float(ours.norms[ours.success].median()) == pytest.approx(
        float(ref_norms[ref_norms > 0].median()), rel=0.05
    )
    cw = carlini_wagner(model, x, y, steps=50, binary_steps=4, lo=0, hi=1)
    # The optimiser should find perturbations at least as small as DeepFool's (median).
    assert float(cw.success.float().mean()) > 0.95
    assert float(cw.norms[cw.success].median()) <= float(ours.norms[ours.success].median()) * 1.05


def test_sanity_checks_pass_on_a_plain_model_and_catch_gradient_masking(setup: tuple) -> None:
    model, x, y = setup
    x, y = x[:200], y[:200]
    space = input_space({}, None, [0.0, 1.0])
    settings = AttackSettings(steps=20, square_queries=200)
    grid = [0.0, 0.05, 0.1, 0.2]
    curves = robustness_curves(model, x, y, space, ["fgsm", "pgd", "square"], grid, [], settings)
    big = {"eps": 1.0, "accuracy": _acc(model, pgd(model, x, y, 1.0, steps=20, lo=0, hi=1), y)}
    checks = sanity_checks(curves, big, len(y))
    assert all(c["passed"] for c in checks), checks
    assert len(checks) == 6  # 3 curves + PGD vs FGSM + Square vs PGD + large ε

    class Masked(nn.Module):
        """Rounding the input to 4 levels has a zero gradient: gradient attacks go blind."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.round(z * 4) / 4)

    masked = Masked(model).eval()
    curves = robustness_curves(masked, x, y, space, ["fgsm", "pgd", "square"], grid, [], settings)
    big = {"eps": 1.0, "accuracy": _acc(masked, pgd(masked, x, y, 1.0, steps=20, lo=0, hi=1), y)}
    failed = {c["check"] for c in sanity_checks(curves, big, len(y)) if not c["passed"]}
    # A black-box attack beats the "robust" white-box numbers; a huge ε does not reach zero.
    assert "black-box Square not stronger than white-box PGD" in failed
    assert "a large ε reaches near zero" in failed


def test_sanity_checks_flag_a_rising_curve() -> None:
    curves = {
        "fgsm": {"eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.5, 0.3]},
        "pgd": {"eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.6, 0.4]},
    }
    checks = {c["check"]: c for c in sanity_checks(curves)}
    assert not checks["PGD at least as strong as FGSM"]["passed"]
    assert "0.1" in checks["PGD at least as strong as FGSM"]["detail"]
    curves["pgd"]["accuracy"] = [0.9, 0.4, 0.45]  # rises by 0.05 > the 0.02 tolerance
    curves["fgsm"]["accuracy"] = [0.9, 0.5, 0.5]
    checks = {c["check"]: c for c in sanity_checks(curves)}
    assert not checks["pgd: accuracy falls as ε grows"]["passed"]
    assert checks["PGD at least as strong as FGSM"]["passed"]


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, L) signals
        out, _ = self.rnn(x.transpose(1, 2))
        return self.head(out[:, -1])


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.transpose(1, 2))
        a, _ = self.attn(t, t, t)
        return self.head(a.mean(1))


class GRUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, 16, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.transpose(1, 2))
        return self.head(out.mean(1))


class EncoderNet(nn.Module):
    """torch's own nn.TransformerEncoder (its fused fast path included in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.transpose(1, 2))).mean(1))


@pytest.mark.parametrize("make", [LSTMNet, GRUNet, AttentionNet, EncoderNet,
                                  lambda: nn.Sequential(nn.Conv1d(1, 8, 3, padding=1),
                                                        nn.Conv1d(8, 8, 3, padding=1, groups=8),
                                                        nn.Flatten(), nn.Linear(8 * 24, 3))])  # fmt: skip
def test_attacks_run_on_recurrent_attention_and_depthwise_models(make: type) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.randn(32, 1, 24), torch.randint(0, 3, (32,))
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        clean = loss(model(x), y)
    for adv in (fgsm(model, x, y, 0.3), pgd(model, x, y, 0.3, steps=5)):
        assert (adv - x).abs().max() <= 0.3 + 1e-6
        with torch.no_grad():
            assert loss(model(adv), y) > clean  # the attack raises the loss it climbs
    assert bool(deepfool(model, x, y).success.float().mean() > 0.9)


def test_integer_inputs_are_refused() -> None:
    with pytest.raises(NotAttackableError, match="token ids"):
        input_space({}, torch.zeros(4, 8, dtype=torch.long))


def test_attacks_leave_no_gradient_on_the_parameters(setup: tuple) -> None:
    model, x, y = setup
    for p in model.parameters():
        p.grad = None  # what training left
    carlini_wagner(model, x[:8], y[:8], steps=3, binary_steps=1, lo=0, hi=1)
    deepfool(model, x[:8], y[:8], steps=3)
    pgd(model, x[:8], y[:8], 0.1, steps=2)
    assert all(p.grad is None for p in model.parameters())


def test_deepfool_refuses_a_single_candidate() -> None:
    with pytest.raises(ValueError, match="candidates >= 2"):
        deepfool(nn.Linear(4, 3), torch.randn(2, 4), torch.zeros(2, dtype=torch.long), candidates=1)


@pytest.mark.parametrize("key, value", [("compare_eps", float("inf")), ("bounds", [0, float("inf")]),
                                        ("eps", [0.0, float("inf")])])  # fmt: skip
def test_config_refuses_infinite_budgets_and_bounds(key: str, value: object) -> None:
    from dlforge.config import ConfigError
    from dlforge.robust.config import RobustConfig

    with pytest.raises(ConfigError, match=key):
        RobustConfig(**{key: value})  # type: ignore[arg-type]


def test_the_whole_report_on_a_table(small_table: DataBundle) -> None:
    """Tabular inputs (N, F): every attack runs (Square over windows of features), and the
    corruptions reduce to Gaussian noise (a table has no neighbours to blur or shift into)."""
    from dlforge.models import create_model
    from dlforge.robust.config import RobustConfig
    from dlforge.robust.suite import robustness_report

    model = create_model("mlp", small_table.input_shape, small_table.num_classes)
    cfg = RobustConfig(samples=30, steps=3, cw_steps=5, square_queries=20, examples=1)
    result = robustness_report(model, small_table, cfg)
    assert set(result["curves"]) == set(cfg.attacks) and list(result["corruptions"]) == [
        "gaussian_noise"
    ]
    assert len(result["corruptions"]["gaussian_noise"]["accuracy"]) == 6
