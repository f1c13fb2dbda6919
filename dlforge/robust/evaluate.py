"""Robust accuracy: one attack at one budget, curves over the budget, transfer to another model,
and the sanity checks that tell a robust model from one that hides its gradients.

``model`` here always reads raw inputs (``space.InRawUnits``) and is in eval mode. A black-box
``predict`` (raw inputs -> logits, no gradients) stands for models that have none, such as an
int8 model in ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlforge.robust.attacks import MinimalResult, Norm, carlini_wagner, deepfool, fgsm, pgd
from dlforge.robust.config import ATTACK_NORMS
from dlforge.robust.space import InputSpace

Predict = Callable[[torch.Tensor], torch.Tensor]
BUDGET = ("fgsm", "pgd", "pgd_l2", "square")  # one run per ε
MINIMAL = ("cw", "deepfool")  # one run gives every ε


@dataclass
class AttackSettings:
    steps: int = 20
    restarts: int = 1
    cw_steps: int = 100
    square_queries: int = 1000
    batch_size: int = 256
    seed: int = 0


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def predict_of(model: nn.Module) -> Predict:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = model(x)
        return out.float()

    return run


def accuracy(predict: Predict, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``predict`` on ``x``; NaN for no samples (not a made-up 0)."""
    if len(x) == 0:
        return float("nan")
    hits = sum(int((predict(x[s]).argmax(1) == y[s]).sum()) for s in _batches(len(x), batch_size))
    return hits / len(x)


def craft(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    space: InputSpace,
    settings: AttackSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial inputs of budget attack ``name`` (white-box) at ``eps``, batch by batch."""
    lo, hi = space.lo, space.hi
    out = []
    for s in _batches(len(x), settings.batch_size):
        xb, yb = x[s], y[s]
        if name == "fgsm":
            out.append(fgsm(model, xb, yb, eps, lo=lo, hi=hi))
        elif name in ("pgd", "pgd_l2"):
            norm: Norm = "linf" if name == "pgd" else "l2"
            out.append(pgd(model, xb, yb, eps, norm=norm, steps=settings.steps,
                           restarts=settings.restarts, lo=lo, hi=hi, generator=generator))  # fmt: skip
        else:
            raise ValueError(f"{name!r} is not a white-box budget attack")
    return torch.cat(out) if out else x.clone()


def square_inputs(
    predict: Predict,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    space: InputSpace,
    settings: AttackSettings,
) -> torch.Tensor:
    from dlforge.robust.square import square_attack

    flat = x.dim() == 2  # a table (N, F): windows over its features, as a (N, 1, F) signal
    out = []
    for i, s in enumerate(_batches(len(x), settings.batch_size)):
        xb = x[s].unsqueeze(1) if flat else x[s]
        run = (lambda z: predict(z.squeeze(1))) if flat else predict
        # Each batch its own draws: the same squares in every batch would correlate the results.
        found = square_attack(run, xb, y[s], eps, n_queries=settings.square_queries,
                              lo=space.lo, hi=space.hi, seed=settings.seed + i)  # fmt: skip
        out.append(found.x_adv.squeeze(1) if flat else found.x_adv)
    return torch.cat(out) if out else x.clone()


def minimal(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    space: InputSpace,
    settings: AttackSettings,
) -> MinimalResult:
    """A minimal-perturbation attack (CW-L2 or DeepFool) over ``x``, batch by batch."""
    if len(x) == 0:
        raise ValueError(f"{name}: no samples to attack")
    scale = space.range if space.range is not None else float(x.std().clamp_min(1e-6))
    parts = []
    for s in _batches(len(x), settings.batch_size):
        if name == "cw":
            parts.append(carlini_wagner(model, x[s], y[s], steps=settings.cw_steps,
                                        lo=space.lo, hi=space.hi, scale=scale))  # fmt: skip
        elif name == "deepfool":
            parts.append(deepfool(model, x[s], y[s], lo=space.lo, hi=space.hi))
        else:
            raise ValueError(f"{name!r} is not a minimal-perturbation attack")
    return MinimalResult(torch.cat([p.x_adv for p in parts]), torch.cat([p.norms for p in parts]),
                         torch.cat([p.success for p in parts]))  # fmt: skip


def robustness_curves(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    space: InputSpace,
    attacks: Sequence[str],
    eps_linf: Sequence[float],
    eps_l2: Sequence[float],
    settings: AttackSettings | None = None,
    predict: Predict | None = None,
) -> dict[str, dict[str, Any]]:
    """Robust accuracy per attack against its budget grid (L∞ or L2 by the attack's norm):
    ``{attack: {"norm", "eps": [...], "accuracy": [...]}}``; the minimal attacks add the median
    distance of the adversarial inputs they found. ``predict`` (default: ``model``) is what the
    Square attack queries."""
    settings = settings or AttackSettings()
    predict = predict or predict_of(model)
    curves: dict[str, dict[str, Any]] = {}
    for name in attacks:
        grid = list(eps_linf if ATTACK_NORMS[name] == "linf" else eps_l2)
        curve: dict[str, Any] = {"norm": ATTACK_NORMS[name], "eps": grid}
        if name in MINIMAL:
            found = minimal(name, model, x, y, space, settings)
            curve["accuracy"] = [found.accuracy_at(e) for e in grid]
            norms = found.norms[found.success & (found.norms > 0)]
            curve["median_distance"] = float(norms.median()) if len(norms) else None
            curve["found"] = float(found.success.float().mean())
        else:
            accs = []
            for eps in grid:
                generator = torch.Generator().manual_seed(settings.seed)
                if name == "square":
                    adv = square_inputs(predict, x, y, eps, space, settings)
                    accs.append(accuracy(predict, adv, y, settings.batch_size))
                else:
                    adv = craft(name, model, x, y, eps, space, settings, generator)
                    accs.append(accuracy(predict_of(model), adv, y, settings.batch_size))
            curve["accuracy"] = accs
        curves[name] = curve
    return curves


def transfer_accuracy(
    source: nn.Module,
    target: Predict,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    space: InputSpace,
    settings: AttackSettings | None = None,
) -> float:
    """Accuracy of ``target`` on PGD inputs crafted against ``source`` (a transfer attack: the
    way to attack a model whose gradients are not at hand, e.g. the int8 deployment of an fp32
    model one holds)."""
    settings = settings or AttackSettings()
    generator = torch.Generator().manual_seed(settings.seed)
    adv = craft("pgd", source, x, y, eps, space, settings, generator)
    return accuracy(target, adv, y, settings.batch_size)


def _at(curve: dict[str, Any], eps: float) -> float | None:
    for e, a in zip(curve["eps"], curve["accuracy"]):
        if abs(e - eps) < 1e-12:
            return float(a)
    return None


def sanity_checks(
    curves: dict[str, dict[str, Any]],
    large_eps: dict[str, float] | None = None,
    samples: int | None = None,
    near_zero: float = 0.05,
) -> list[dict[str, Any]]:
    """Checks against gradient masking (Carlini et al. 2019, "On evaluating adversarial
    robustness"): a model that only looks robust because its gradients mislead the attack
    fails one of these. Differences below max(2 points, 1/√samples) count as sampling noise:
    two attacks of about equal strength differ by that much on a finite sample (Square with
    200 queries beat PGD-20 by 2 points at ε=0.05 on 200 digits), while a masked model's
    gaps are tens of points.

    - accuracy falls as ε grows (each curve, within the tolerance);
    - PGD is at least as strong as FGSM at every ε;
    - a large enough ε (``large_eps``: PGD's accuracy there) reaches near zero;
    - the black-box Square attack is not stronger than white-box PGD.
    """
    checks: list[dict[str, Any]] = []
    tolerance = max(0.02, 1 / math.sqrt(samples)) if samples else 0.02

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    for attack, curve in curves.items():
        acc = curve["accuracy"]
        rises = [(curve["eps"][i + 1], acc[i + 1] - acc[i]) for i in range(len(acc) - 1)
                 if acc[i + 1] > acc[i] + tolerance]  # fmt: skip
        add(f"{attack}: accuracy falls as ε grows", not rises,
            "monotone" if not rises else f"rises by {rises[0][1]:.3f} at ε={rises[0][0]:g}")  # fmt: skip
    pairs = [("pgd", "fgsm", "PGD at least as strong as FGSM"),
             ("square", "pgd", "black-box Square not stronger than white-box PGD")]  # fmt: skip
    for strong, weak, title in pairs:
        if strong not in curves or weak not in curves:
            continue
        worse = []
        for eps in curves[strong]["eps"]:
            a, b = _at(curves[strong], eps), _at(curves[weak], eps)
            if a is None or b is None:
                continue
            # PGD must not be weaker than FGSM; Square must not beat PGD.
            bad = a > b + tolerance if strong == "pgd" else b > a + tolerance
            if bad:
                worse.append((eps, a, b))
        detail = (
            "holds at every ε"
            if not worse
            else (f"at ε={worse[0][0]:g}: {strong} {worse[0][1]:.3f} vs {weak} {worse[0][2]:.3f}"
                  " — the white-box attack is too weak there or the gradients mislead it: raise "
                  "robust.steps and robust.restarts; if the gap stays, suspect masking")
        )  # fmt: skip
        add(title, not worse, detail)
    if large_eps is not None:
        add("a large ε reaches near zero", large_eps["accuracy"] <= near_zero,
            f"PGD accuracy {large_eps['accuracy']:.3f} at ε={large_eps['eps']:g} "
            f"(near zero: <= {near_zero})")  # fmt: skip
    return checks
