"""The Square attack (dlforge.robust.square): budget, query accounting, determinism, the known
optimum of a linear model, and real drops in accuracy on small trained conv nets."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from dlforge.robust.square import SquareResult, _p_selection, square_attack

Predict = Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The models are tiny: threads only add overhead (and thrash on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- small synthetic tasks and models --------------------------------------------------------


def _bars(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 8, 8) images in [0, 1]: a bright row (class 0) or column (class 1) on noise."""
    y = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(0, 8, (n,), generator=g)
    hit = torch.arange(8) == pos[:, None]
    bar = torch.where(y[:, None, None] == 0, hit[:, :, None], hit[:, None, :])
    x = 0.5 + 0.1 * torch.randn(n, 8, 8, generator=g) + 0.35 * bar
    return x[:, None].clamp(0, 1), y


def _waves(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 40) unbounded signals: a noisy sine of 2 (class 0) or 4 (class 1) periods."""
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.arange(40.0)
    f = torch.where(y == 0, 2.0, 4.0)[:, None]
    phase = torch.rand(n, 1, generator=g) * 2 * torch.pi
    x = 0.5 * torch.sin(2 * torch.pi * f * t / 40 + phase) + 0.2 * torch.randn(n, 40, generator=g)
    return x[:, None], y


def _train(
    model: nn.Module, data: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
) -> nn.Module:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = data(512, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(200):
        b = slice(i * 64 % 512, i * 64 % 512 + 64)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn2d() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 2)
    )
    return _train(net, _bars)


@pytest.fixture(scope="module")
def cnn1d() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4), nn.Flatten(), nn.Linear(80, 2)
    )
    return _train(net, _waves)


def _test_set(
    data: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]], n: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    return data(n, torch.Generator().manual_seed(123))


def _accuracy(predict: Predict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((predict(x).argmax(1) == y).float().mean())


def _check_result(
    r: SquareResult, predict: Predict, x: torch.Tensor, y: torch.Tensor, eps: float,
    n_queries: int, lo: float | None, hi: float | None,
) -> None:  # fmt: skip
    """What every result must satisfy: budget, bounds, query range, honest success."""
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert r.queries.shape == (len(x),) and r.queries.dtype == torch.int64
    assert r.success.shape == (len(x),) and r.success.dtype == torch.bool
    assert float((r.x_adv - x).abs().max()) <= eps + 1e-6
    if lo is not None:
        assert float(r.x_adv.min()) >= lo
    if hi is not None:
        assert float(r.x_adv.max()) <= hi
    assert int(r.queries.min()) >= 1 and int(r.queries.max()) <= n_queries
    with torch.no_grad():
        assert torch.equal(r.success, predict(r.x_adv).argmax(1) != y)


# --- the schedule ------------------------------------------------------------------------------


def test_p_schedule_matches_the_reference_code() -> None:
    # 10,000 queries: p halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 501: 16, 1001: 32, 2001: 64}
    expected |= {4001: 128, 6000: 64 * 2, 6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for it, div in expected.items():
        assert _p_selection(0.8, it, 10000) == pytest.approx(0.8 / div), it
    # Other budgets rescale: with 1000 queries iteration 1 is "10" and 2 is "20".
    assert _p_selection(0.8, 1, 1000) == pytest.approx(0.8)
    assert _p_selection(0.8, 2, 1000) == pytest.approx(0.4)
    assert _p_selection(0.8, 801, 1000) == pytest.approx(0.8 / 512)


# --- budget, bounds, queries -------------------------------------------------------------------


def test_budget_bounds_and_success_on_images(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars)
    r = square_attack(cnn2d, x, y, 0.1, n_queries=100, lo=0.0, hi=1.0)
    _check_result(r, cnn2d, x, y, 0.1, 100, 0.0, 1.0)


def test_budget_on_unbounded_multichannel_signals() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 18, 5)).eval()
    x = torch.randn(30, 3, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    r = square_attack(net, x, y, 0.3, n_queries=50)
    _check_result(r, net, x, y, 0.3, 50, None, None)
    # Without bounds nothing is clipped: every coordinate sits at a vertex of the ball.
    assert torch.allclose((r.x_adv - x).abs(), torch.full_like(x, 0.3), atol=1e-6)


def test_initialisation_is_vertical_stripes() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 10, 4)).eval()
    x = torch.rand(20, 3, 6, 10, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    with torch.no_grad():
        y = net(x).argmax(1)
    # Two queries: the clean input and the initial perturbation, no search step.
    r = square_attack(net, x, y, 0.05, n_queries=2, lo=0.0, hi=1.0)
    delta = r.x_adv - x
    assert torch.allclose(delta.abs(), torch.full_like(x, 0.05), atol=1e-6)  # no clipping here
    # Constant along the height, one sign per column and channel, and not all the same.
    assert torch.allclose(delta, delta[:, :, :1, :].expand_as(delta), atol=1e-6)
    assert bool((delta[:, :, 0, :] > 0).any()) and bool((delta[:, :, 0, :] < 0).any())


def test_query_accounting_and_already_wrong_samples(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars, 60)
    y = y.clone()
    y[:10] = 1 - y[:10]  # make the model wrong on (most of) these before any attack
    with torch.no_grad():
        wrong = cnn2d(x).argmax(1) != y
    calls: list[int] = []

    def counted(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        out: torch.Tensor = cnn2d(batch)
        return out

    n_queries = 40
    r = square_attack(counted, x, y, 0.04, n_queries=n_queries, lo=0.0, hi=1.0)
    _check_result(r, cnn2d, x, y, 0.04, n_queries, 0.0, 1.0)
    assert int(wrong.sum()) >= 8
    # Every row of every call is a query of one sample, and nothing else is.
    assert sum(calls) == int(r.queries.sum())
    assert calls[0] == len(x) and len(calls) <= n_queries
    # Samples wrong from the start: untouched, one query, fooled.
    assert torch.equal(r.x_adv[wrong], x[wrong])
    assert bool((r.queries[wrong] == 1).all()) and bool(r.success[wrong].all())
    # The others spend the whole budget unless they are fooled (then they stop): the eps is
    # small enough that both happen.
    rest = ~wrong
    assert bool((r.queries[rest & ~r.success] == n_queries).all())
    assert int((rest & ~r.success).sum()) > 0 and int((rest & r.success).sum()) > 0
    assert bool((r.queries[rest] >= 2).all())
    # A fooled sample is asked no more: success comes at the query that found it.
    assert bool((r.queries[rest & r.success] < n_queries).any())


def test_predict_may_write_into_its_input(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars, 30)

    def vandal(batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = cnn2d(batch)
        batch.zero_()  # a black box may reuse the buffer it is given
        return out

    a = square_attack(cnn2d, x, y, 0.05, n_queries=30, lo=0.0, hi=1.0)
    b = square_attack(vandal, x, y, 0.05, n_queries=30, lo=0.0, hi=1.0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)


# --- randomness ---------------------------------------------------------------------------------


def test_seeded_and_leaves_the_global_rng_alone(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars, 40)
    state = torch.get_rng_state()
    a = square_attack(cnn2d, x, y, 0.05, n_queries=50, lo=0.0, hi=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = square_attack(cnn2d, x, y, 0.05, n_queries=50, lo=0.0, hi=1.0, seed=7)
    c = square_attack(cnn2d, x, y, 0.05, n_queries=50, lo=0.0, hi=1.0, seed=8)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


# --- a linear model, whose worst case is known ---------------------------------------------------


def test_linear_model_against_the_closed_form_optimum() -> None:
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(64, 2)
    with torch.no_grad():
        model.weight.copy_(0.5 * torch.randn(2, 64, generator=g))
        model.bias.zero_()

    def predict(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(x.flatten(1))
        return out

    x = torch.rand(200, 1, 8, 8, generator=g)
    with torch.no_grad():
        logits = predict(x)
    y = logits.argmax(1)
    eps = 0.05
    # Margin (true minus other logit) is v·x with v = w_y - w_other; the L∞ ball intersected
    # with [0, 1] lowers it most by moving each pixel against sign(v) as far as allowed.
    v = (model.weight[y] - model.weight[1 - y]).detach()
    xf = x.flatten(1)
    room = torch.where(v > 0, xf.clamp(max=eps), (1 - xf).clamp(max=eps))
    margin = (v * xf).sum(1)
    best = margin - (v.abs() * room).sum(1)  # the lowest margin any attack can reach
    robust, foolable = best > 1e-4, best < 0
    assert int(robust.sum()) >= 50 and int(foolable.sum()) >= 50  # both kinds are tested

    r = square_attack(predict, x, y, eps, n_queries=300, lo=0.0, hi=1.0)
    _check_result(r, predict, x, y, eps, 300, 0.0, 1.0)
    with torch.no_grad():
        reached = (v * r.x_adv.flatten(1)).sum(1)
    assert bool((reached >= best - 1e-4).all())  # no sample beats the optimum
    assert not bool(r.success[robust].any())  # so the robust ones are never reported fooled
    assert float(r.success[foolable].float().mean()) >= 0.9
    # Search, not luck: the initial stripes alone fool far fewer.
    init = square_attack(predict, x, y, eps, n_queries=2, lo=0.0, hi=1.0)
    assert float(init.success[foolable].float().mean()) <= 0.5


# --- trained conv nets ----------------------------------------------------------------------------


def test_attack_lowers_accuracy_of_an_image_cnn(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars)
    clean = _accuracy(cnn2d, x, y)
    assert clean >= 0.9
    r = square_attack(cnn2d, x, y, 0.1, n_queries=200, lo=0.0, hi=1.0)
    _check_result(r, cnn2d, x, y, 0.1, 200, 0.0, 1.0)
    robust = 1 - float(r.success.float().mean())
    assert robust <= 0.2
    assert robust == pytest.approx(_accuracy(cnn2d, r.x_adv, y))
    assert float(r.queries[r.success].float().mean()) < 100  # fooled ones stop early


def test_attack_lowers_accuracy_of_a_signal_cnn(cnn1d: nn.Module) -> None:
    x, y = _test_set(_waves)
    clean = _accuracy(cnn1d, x, y)
    assert clean >= 0.9
    r = square_attack(cnn1d, x, y, 0.2, n_queries=200)
    _check_result(r, cnn1d, x, y, 0.2, 200, None, None)
    robust = 1 - float(r.success.float().mean())
    assert robust <= 0.2
    # The search does the work: random ±eps (the initialisation) leaves most samples right.
    init = square_attack(cnn1d, x, y, 0.2, n_queries=2)
    assert 1 - float(init.success.float().mean()) >= robust + 0.4


def test_numpy_backed_predict_gives_the_same_result(cnn1d: nn.Module) -> None:
    x, y = _test_set(_waves, 50)

    def numpy_predict(batch: torch.Tensor) -> torch.Tensor:
        # As a wrapper around ONNX Runtime would: tensor → numpy → model → numpy → tensor.
        arr = np.ascontiguousarray(batch.numpy())
        with torch.no_grad():
            out = cnn1d(torch.from_numpy(arr)).numpy()
        return torch.from_numpy(np.array(out))

    a = square_attack(cnn1d, x, y, 0.15, n_queries=60, seed=3)
    b = square_attack(numpy_predict, x, y, 0.15, n_queries=60, seed=3)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.success, b.success)
    assert bool(a.success.any())  # the comparison covers a search that found something


# --- edge cases -----------------------------------------------------------------------------------


def test_eps_zero_returns_x_after_one_query(cnn2d: nn.Module) -> None:
    x, y = _test_set(_bars, 30)
    y = y.clone()
    y[:5] = 1 - y[:5]
    calls: list[int] = []

    def counted(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        out: torch.Tensor = cnn2d(batch)
        return out

    r = square_attack(counted, x, y, 0.0, n_queries=100, lo=0.0, hi=1.0)
    assert torch.equal(r.x_adv, x) and r.x_adv is not x
    assert calls == [30] and bool((r.queries == 1).all())
    with torch.no_grad():
        assert torch.equal(r.success, cnn2d(x).argmax(1) != y)
    assert bool(r.success.any())


def test_bad_inputs_are_refused(cnn2d: nn.Module) -> None:
    y = torch.zeros(4, dtype=torch.long)
    for shape in [(4, 64), (4, 1, 8, 8, 2), (64,)]:
        with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
            square_attack(cnn2d, torch.rand(shape), y, 0.1)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="y must be"):
        square_attack(cnn2d, x, torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="above hi"):
        square_attack(cnn2d, x + 1, y, 0.1, lo=0.0, hi=1.0)
    with pytest.raises(ValueError, match="n_queries"):
        square_attack(cnn2d, x, y, 0.1, n_queries=0)
    with pytest.raises(ValueError, match="logits"):
        square_attack(lambda b: b.flatten(1)[:, :1], x, y, 0.1)
