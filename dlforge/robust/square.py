"""The Square attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020), L∞ version.

A score-based black-box attack: it needs only the model's logits, never its gradients, so it
applies where white-box attacks cannot — an int8 model in ONNX Runtime, a server, a model with
non-differentiable preprocessing — and it is not fooled by gradient masking, which makes it a
useful check on a white-box result: if Square finds adversarial examples that PGD missed, the
gradients were lying.

The search is a random local search over the vertices of the L∞ ball: every coordinate of the
perturbation is always ±ε (clipped to the valid range), since for a roughly linear model the
worst case sits at a vertex. Each step redraws the sign of one random square (a window, for a
1-D signal) per channel and keeps the change only if the margin loss went down. The square
shrinks on a fixed schedule, from coarse moves that change a large part of the input early on
to fine ones at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SquareResult", "square_attack"]

# Iterations (on a budget of 10,000 queries) after which p, the fraction of the input a square
# covers, halves: the schedule of the reference code (square_attack_linf's p_selection).
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# A new square that equals what is already there would cost a query for nothing; the reference
# code redraws its signs until they change something. Redraw at most this many times, then flip
# the signs, which changes every coordinate that clipping does not pin.
_MAX_REDRAWS = 8


@dataclass
class SquareResult:
    """What ``square_attack`` found, per sample."""

    x_adv: torch.Tensor  # (N, ...) adversarial inputs, raw units, within the budget and bounds
    queries: torch.Tensor  # (N,) int64, model queries spent per sample (incl. the initial one)
    success: torch.Tensor  # (N,) bool, misclassified at the end


def _p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of the input changed at search iteration ``it`` of a ``n_queries`` budget.

    Piece-wise constant, halving at fixed iterations of a 10,000-query run; other budgets
    stretch or squeeze the schedule so that it always ends at the same fine scale.
    """
    it = int(it / n_queries * 10000)
    halvings = sum(1 for t in _P_HALVINGS if it > t)
    return p_init / 2**halvings


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the best other one: > 0 while the sample is classified
    right. The paper uses it rather than cross-entropy for untargeted L∞ attacks: it is zero
    exactly at the decision boundary (so it says when to stop) and it is not flattened by a
    saturated softmax, so a confident model still gives the search a signal to follow."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def _check_inputs(
    x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int, p_init: float,
    lo: float | None, hi: float | None,
) -> None:  # fmt: skip
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"square_attack takes images (N, C, H, W) or 1-D signals (N, C, L); got {shape}"
        )
    if not x.dtype.is_floating_point:
        raise ValueError(f"square_attack perturbs a float input; x is {x.dtype}")
    if y.shape != (x.shape[0],) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"y must be (N,) = ({x.shape[0]},) integer class labels; got {y.dtype} "
            f"of shape {tuple(y.shape)}"
        )
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite; got {eps}")
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1; got {n_queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init (a fraction of the input) must be in (0, 1]; got {p_init}")
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"bounds must have lo < hi; got lo={lo}, hi={hi}")
    if x.numel():
        # The budget and the bounds can both hold only for an input inside the bounds; allow
        # float noise from a normalise/denormalise round trip.
        tol = 1e-6 * max(1.0, abs(lo or 0.0), abs(hi or 0.0))
        if lo is not None and float(x.min()) < lo - tol:
            raise ValueError(f"x has values below lo={lo} (min {float(x.min())})")
        if hi is not None and float(x.max()) > hi + tol:
            raise ValueError(f"x has values above hi={hi} (max {float(x.max())})")


def square_attack(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    n_queries: int = 1000,
    p_init: float = 0.05,
    lo: float | None = None,
    hi: float | None = None,
    seed: int = 0,
) -> SquareResult:
    """Untargeted L∞ Square attack on ``x`` (raw units) with true labels ``y``.

    ``predict`` maps a float batch in raw units to logits (N, K); it is treated as a black box:
    called without autograd on fresh copies of the inputs, with only the samples still being
    attacked. Every call counts one query for each sample in it. The first query is the clean
    input (a sample the model already gets wrong is returned as it is, fooled, after one query),
    the second the initial perturbation, and each further one a search step; a sample stops as
    soon as it is misclassified, the rest when ``n_queries`` are spent.

    ``x_adv`` stays within ``eps`` of ``x`` in L∞ and within ``[lo, hi]`` where given. ``p_init``
    is the fraction of the input the first squares cover. Random draws come from a generator
    seeded with ``seed`` (CPU, so that a seed gives the same attack on any device).
    """
    _check_inputs(x, y, eps, n_queries, p_init, lo, hi)
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])  # (H, W) or (L,)
    device = x.device
    x = x.detach()
    y = y.detach().to(device=device, dtype=torch.long)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    x_adv = x.clone()
    if n == 0:
        return SquareResult(x_adv, queries, torch.zeros(0, dtype=torch.bool, device=device))

    def query(idx: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Logits (float64, on x's device) for ``batch``, the inputs of samples ``idx``."""
        with torch.no_grad():
            # A copy: a black box may keep, reuse or write into the buffer it is given.
            out = torch.as_tensor(predict(batch.clone()))
        if out.dim() != 2 or out.shape[0] != len(idx) or out.shape[1] < 2:
            raise ValueError(
                f"predict must return logits (N, K >= 2) for a batch of {len(idx)}; "
                f"got shape {tuple(out.shape)}"
            )
        queries[idx] += 1
        return out.detach().to(device=device, dtype=torch.float64)

    def clip(x0: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """The vertex ``x0 + eps * sign`` of the ball, clipped to the valid range."""
        v = x0 + eps * sign
        return v if lo is None and hi is None else v.clamp(lo, hi)

    everyone = torch.arange(n, device=device)
    logits = query(everyone, x)
    if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}); got {y.min()}..{y.max()}")
    # Fooled means the model's answer (its argmax) is wrong: on a tie (margin 0, common for
    # quantised logits) the argmax decides, as it does for whoever uses the model.
    fooled = logits.argmax(dim=1) != y
    if eps <= 0 or n_queries == 1 or bool(fooled.all()):
        return SquareResult(x_adv, queries, fooled)

    gen = torch.Generator().manual_seed(seed)

    def draw_signs(*size: int) -> torch.Tensor:
        bits = torch.randint(0, 2, size, generator=gen)
        return (2 * bits - 1).to(device=device, dtype=x.dtype)

    # Initialisation: vertical stripes, one random sign per column and channel, constant along
    # the height. The paper found these hurt (untargeted) models much more than random signs
    # per pixel at the same L∞ size: convolutional filters respond strongly to high-frequency
    # patterns of one orientation, so the very first query often already fools a sample. A
    # signal has no second axis to stripe along: there each position gets its own sign.
    attacked = everyone[~fooled]
    m = len(attacked)
    init = draw_signs(m, c, 1, spatial[1]) if len(spatial) == 2 else draw_signs(m, c, spatial[0])
    sign = torch.zeros_like(x)  # the perturbation, in units of eps; always ±1
    sign[attacked] = init.expand(m, c, *spatial)
    x_adv[attacked] = clip(x[attacked], sign[attacked])
    logits = query(attacked, x_adv[attacked])
    margin = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    margin[attacked] = _margin(logits, y[attacked])
    fooled[attacked] = logits.argmax(dim=1) != y[attacked]
    active = torch.zeros(n, dtype=torch.bool, device=device)
    active[attacked] = True

    for it in range(n_queries - 2):
        idx = everyone[active & ~fooled]
        if len(idx) == 0:
            break
        k = len(idx)
        # Side of the square: p is the fraction of the H x W pixels it covers (of the L
        # positions, for a signal); at least one pixel, at most the whole input.
        p = _p_selection(p_init, it, n_queries)
        if len(spatial) == 2:
            s = min(max(round(math.sqrt(p * spatial[0] * spatial[1])), 1), min(spatial))
        else:
            s = min(max(round(p * spatial[0]), 1), spatial[0])
        # Uniform position; the mask is True inside each sample's square.
        mask = torch.ones((k, 1, *spatial), dtype=torch.bool, device=device)
        for axis, size in enumerate(spatial):
            start = torch.randint(0, size - s + 1, (k,), generator=gen).to(device)
            pos = torch.arange(size, device=device)
            inside = (pos >= start[:, None]) & (pos < start[:, None] + s)  # (k, size)
            shape = [k, 1] + [1] * len(spatial)
            shape[2 + axis] = size
            mask &= inside.view(shape)

        x0, sign_best, x_best = x[idx], sign[idx], x_adv[idx]
        square_sign = draw_signs(k, c, *([1] * len(spatial)))
        for redraw in range(_MAX_REDRAWS + 1):
            cand_sign = torch.where(mask, square_sign, sign_best)
            cand = clip(x0, cand_sign)
            same = (cand == x_best).flatten(1).all(dim=1)
            if not bool(same.any()):
                break
            # The new square is what is already there (e.g. it lies on one drawn with the same
            # signs, or clipping hides the change): draw again; as a last resort flip it.
            again = (
                square_sign.neg() if redraw == _MAX_REDRAWS - 1 else draw_signs(*square_sign.shape)
            )
            square_sign = torch.where(same.view(-1, *([1] * (x.dim() - 1))), again, square_sign)

        logits = query(idx, cand)
        new_margin = _margin(logits, y[idx])
        new_fooled = logits.argmax(dim=1) != y[idx]
        # Greedy: keep the step only where the margin went down (or the argmax flipped on a
        # tie); otherwise the sample stays at its best point so far.
        better = (new_margin < margin[idx]) | new_fooled
        keep = idx[better]
        sign[keep] = cand_sign[better]
        x_adv[keep] = cand[better]
        margin[keep] = new_margin[better]
        fooled[keep] = new_fooled[better]

    return SquareResult(x_adv, queries, fooled)
