"""White-box attacks: FGSM, PGD (L∞ and L2, random start, restarts), Carlini-Wagner L2 and
DeepFool.

Every attack takes a model that reads *raw* inputs (``space.InRawUnits`` wraps a model trained
on normalised data), the raw inputs ``x`` and labels ``y``, and bounds ``lo``/``hi`` the
perturbed input is clipped to (None: unbounded). The model should be in eval mode: an attack
measures the deployed function, and batch-norm statistics must not move while it runs.

Budget attacks (FGSM, PGD) answer "is the model right on the worst input within ε?"; minimal
attacks (CW, DeepFool) answer "how far is the nearest wrong input?", which gives the whole
accuracy-against-ε curve from one run (``MinimalResult.accuracy_at``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["linf", "l2"]


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1), to scale each sample of ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


def _clip(x: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    return x if lo is None and hi is None else x.clamp(lo, hi)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(mean cross-entropy)/dx, in fp32, leaving no gradient on the parameters."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """``delta`` moved into the ε-ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * _per_sample(scale, delta)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size ε along the sign of
    the loss gradient."""
    if eps <= 0:
        return x.detach().clone()
    return _clip(x + eps * _input_grad(model, x, y).sign(), lo, hi).detach()


def ascent(grad: torch.Tensor, alpha: float, norm: Norm) -> torch.Tensor:
    """A step of size ``alpha`` of steepest ascent under ``norm``: the gradient's sign (L∞) or
    the gradient scaled to unit L2 norm per sample (L2)."""
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _per_sample(_l2(grad) + 1e-10, grad)


def random_offset(
    x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None
) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        return ((2 * u - 1) * eps).to(x.device)
    # A random direction at a random radius in [0, ε] (as torchattacks' PGDL2).
    d = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    r = torch.rand(len(x), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return d * _per_sample(r * eps / _l2(d).clamp_min(1e-12), d)


def _pgd_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Norm,
    steps: int,
    alpha: float,
    start: torch.Tensor | None,
    lo: float | None,
    hi: float | None,
) -> torch.Tensor:
    x_adv = x.detach().clone() if start is None else _clip(x + start, lo, hi).detach()
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y)
        x_adv = x_adv.detach() + ascent(grad, alpha, norm)
        x_adv = _clip(x + project(x_adv - x, eps, norm), lo, hi).detach()
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: Norm = "linf",
    steps: int = 20,
    alpha: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    lo: float | None = None,
    hi: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018) in the ε-ball of ``norm``.

    ``alpha`` (step size) defaults to 2.5·ε/steps, Madry's rule: enough to cross the ball and
    come back. Each of ``restarts`` runs starts at a fresh random point; per sample the first
    run that fools the model is kept, else the one with the highest loss. The random start is
    drawn from ``generator`` (a CPU generator; default: torch's global one).
    """
    if eps <= 0:
        return x.detach().clone()
    if restarts < 1 or steps < 1:
        raise ValueError(f"pgd needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    best = x.detach().clone()
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        start = random_offset(x, eps, norm, generator) if random_start else None
        x_adv = _pgd_once(model, x, y, eps, norm, steps, alpha, start, lo, hi)
        with torch.no_grad():
            logits = model(x_adv).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            wrong = logits.argmax(1) != y
        # Keep a run's input where it fools for the first time, or beats the loss of a sample
        # that nothing has fooled yet.
        take = (~fooled) & (wrong | (loss > best_loss))
        best[take] = x_adv[take]
        best_loss = torch.where(take, loss, best_loss)
        fooled |= wrong
        if not random_start or bool(fooled.all()):
            break  # a deterministic run would repeat itself
    return best


@dataclass
class MinimalResult:
    """What a minimal-perturbation attack found, per sample: the adversarial input, its L2
    distance from the clean one (0 where the clean input is misclassified already) and whether
    it fools the model (False: no adversarial input found; ``norms`` then is inf)."""

    x_adv: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor

    def accuracy_at(self, eps: float) -> float:
        """Robust accuracy under an L2 budget ε: samples with no adversarial input within ε."""
        return float((~(self.success & (self.norms <= eps + 1e-7))).float().mean())


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other one (> 0: still right)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], -float("inf"))
    return true - other.max(1).values


def carlini_wagner(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
    binary_steps: int = 5,
    lo: float | None = None,
    hi: float | None = None,
    scale: float | None = None,
) -> MinimalResult:
    """Carlini-Wagner L2 (2017): minimise ||δ||² + c·max(margin, -κ) with Adam, searching ``c``
    per sample by bisection (×10 while no success is found); the smallest successful
    perturbation is kept. ``lr`` is in units of ``scale``: by default the input range, or for
    unbounded inputs the std of ``x`` (pass the dataset's so batches of one run agree).

    The box constraint is kept by projecting δ after each step rather than by the paper's tanh
    change of variables: in tanh space a value at the bound (the many 0-valued pixels of a digit
    image) has a vanishing gradient and cannot move, and CW then found adversarial inputs for
    56% of the digits where DeepFool found them for all.
    """
    n = len(x)
    x = x.detach()
    if scale is None:
        scale = (hi - lo) if lo is not None and hi is not None else float(x.std().clamp_min(1e-6))
    best_norm = torch.full((n,), float("inf"), device=x.device)
    best_adv = x.clone()
    with torch.no_grad():
        already = model(x).argmax(1) != y
    best_norm[already] = 0.0
    c_now = torch.full((n,), c, device=x.device)
    c_lo = torch.zeros(n, device=x.device)
    c_hi = torch.full((n,), float("inf"), device=x.device)
    for _ in range(binary_steps):
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr * scale)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            adv = x + delta
            logits = model(adv).float()
            dist = delta.flatten(1).pow(2).sum(1)
            margin = _margin(logits, y)
            loss = (dist + c_now * margin.clamp(min=-kappa)).sum()
            # The gradient of δ only: nothing lands on the model's parameters.
            (delta.grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                wrong = (logits.argmax(1) != y) & ~already
                better = wrong & (dist.sqrt() < best_norm)
                best_norm = torch.where(better, dist.sqrt(), best_norm)
                best_adv[better] = adv.detach()[better]
                found |= wrong
            opt.step()
            with torch.no_grad():  # back into the box
                delta.copy_(_clip(x + delta, lo, hi) - x)
        # Bisection on c: smaller where an adversarial input was found, larger where not.
        c_hi = torch.where(found, torch.minimum(c_hi, c_now), c_hi)
        c_lo = torch.where(found, c_lo, torch.maximum(c_lo, c_now))
        c_now = torch.where(torch.isinf(c_hi), c_now * 10, (c_lo + c_hi) / 2)
    success = torch.isfinite(best_norm)
    return MinimalResult(best_adv.detach(), best_norm, success)


def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    lo: float | None = None,
    hi: float | None = None,
) -> MinimalResult:
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2: step to the nearest linearised decision
    boundary among the ``candidates`` most likely classes, until the label flips; the total
    step is scaled by 1 + ``overshoot`` to land just across."""
    if candidates < 2:
        raise ValueError(
            f"deepfool needs candidates >= 2 (the true class and one other), got {candidates}"
        )
    x = x.detach()
    n = len(x)
    with torch.no_grad():
        logits0 = model(x).float()
    if logits0.dim() != 2 or logits0.shape[1] < 2:
        raise ValueError(f"deepfool needs logits (N, K >= 2), got {tuple(logits0.shape)}")
    k = min(candidates, logits0.shape[1])
    order = logits0.argsort(1, descending=True)
    others = order[order != y[:, None]].view(n, -1)[:, : k - 1]  # every class but the true one
    classes = torch.cat([y[:, None], others], 1)
    r_total = torch.zeros_like(x)
    active = logits0.argmax(1) == y
    already = ~active
    x_adv = x.clone()
    for _ in range(steps):
        if not bool(active.any()):
            break
        idx = active.nonzero()[:, 0]
        xa = x_adv[idx].clone().requires_grad_(True)
        logits = model(xa).float()
        picked = logits.gather(1, classes[idx])  # (m, k): true class first
        grads = []
        for j in range(k):
            (g,) = torch.autograd.grad(picked[:, j].sum(), xa, retain_graph=j < k - 1)
            grads.append(g)
        g_all = torch.stack(grads, 1)  # (m, k, ...)
        w = g_all[:, 1:] - g_all[:, :1]
        f = (picked[:, 1:] - picked[:, :1]).detach()
        w_norm = w.flatten(2).norm(dim=2).clamp_min(1e-12)
        dist = f.abs() / w_norm
        best = dist.argmin(1)
        rows = torch.arange(len(idx), device=x.device)
        w_best, d_best = w[rows, best], (dist[rows, best] + 1e-4) / w_norm[rows, best]
        r_total[idx] += _per_sample(d_best, w_best) * w_best.detach()
        x_adv[idx] = _clip(x[idx] + (1 + overshoot) * r_total[idx], lo, hi)
        with torch.no_grad():
            still = model(x_adv[idx]).argmax(1) == y[idx]
        active[idx] = still
    with torch.no_grad():
        success = (model(x_adv).argmax(1) != y) | already
    norms = torch.where(success, _l2(x_adv - x), torch.full((n,), float("inf"), device=x.device))
    norms[already] = 0.0
    return MinimalResult(x_adv.detach(), norms, success)
