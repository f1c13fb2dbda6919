"""The report's robustness section, and the robustness columns of the compress and quantize
sections: built from hand-made results (images 1x8x8, signals 1x40), no model, no attack."""

from __future__ import annotations

import base64
import html
import re
import struct
from typing import Any

import numpy as np
import pytest

from dlforge.report import plots
from dlforge.report.html import render_report
from dlforge.report.sections import compress_section, quantize_section, robust_section

TITLE = "Adversarial robustness and corruptions"
EPS = [0.0, 0.025, 0.05, 0.1, 0.2]
EPS_L2 = [0.0, 0.25, 0.5, 1.0, 2.0]


def _curve(norm: str, eps: list[float], accuracy: list[float], **extra: Any) -> dict[str, Any]:
    return {"norm": norm, "eps": eps, "accuracy": accuracy, **extra}


def robust_result(shape: tuple[int, ...], *, full: bool = True) -> dict[str, Any]:
    """A result as ``robustness_report`` returns it; ``full=False`` drops the optional keys."""
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, shape)
    adv = np.clip(clean + rng.choice([-0.1, 0.1], shape), 0, 1)
    curves = {
        "fgsm": _curve("linf", EPS, [0.975, 0.93, 0.81, 0.52, 0.2]),
        "pgd": _curve("linf", EPS, [0.975, 0.9, 0.7, 0.31, 0.02]),
        "square": _curve("linf", EPS, [0.975, 0.95, 0.88, 0.6, 0.3]),
        "pgd_l2": _curve("l2", EPS_L2, [0.975, 0.9, 0.61, 0.2, 0.0]),
        "cw": _curve("l2", EPS_L2, [0.975, 0.85, 0.5, 0.1, 0.0], median_distance=0.4925, found=1.0),
        "deepfool": _curve(
            "l2", EPS_L2, [0.975, 0.88, 0.55, 0.15, 0.01], median_distance=None, found=0.0
        ),
    }
    result: dict[str, Any] = {
        "samples": 500,
        "space": {"lo": 0.0, "hi": 1.0, "normalised": True},
        "clean_accuracy": 0.975,
        "curves": curves,
        "large_eps": {"eps": 1.0, "accuracy": 0.0},
        "sanity": [
            {"check": "pgd: accuracy falls as ε grows", "passed": True, "detail": "monotone"},
            {
                "check": "black-box Square not stronger than white-box PGD",
                "passed": False,
                "detail": "at ε=0.1: square 0.250 vs pgd 0.310",
            },
        ],
        "compare_eps": 0.1,
        "settings": {"steps": 20, "restarts": 1, "cw_steps": 100, "square_queries": 1000},
        "examples": [
            {
                "label": "3",
                "clean_prediction": "3",
                "adversarial_prediction": "8",
                "clean": clean.tolist(),
                "adversarial": adv.tolist(),
                "linf": 0.1,
            },
            {
                "label": "5",
                "clean_prediction": "5",
                "adversarial_prediction": "6",
                "clean": clean.tolist(),
                "adversarial": adv.tolist(),
                "linf": 0.1,
            },
        ],
        "input_shape": list(shape),
    }
    if full:
        result["corruptions"] = {
            name: {"severity": [0, 1, 2, 3, 4, 5], "accuracy": [0.975, 0.9, 0.8, 0.6, 0.4, 0.2]}
            for name in ("gaussian_noise", "blur", "contrast", "shift")
        }
    else:
        del result["large_eps"], result["settings"], result["compare_eps"]
        result["examples"] = []
        result["curves"] = {k: curves[k] for k in ("fgsm", "pgd")}
        result["space"] = {"lo": None, "hi": None, "normalised": False}
    return result


def _pngs(parts: list[str] | str) -> dict[str, bytes]:
    """Figure name -> PNG bytes of every embedded figure."""
    text = "".join(parts) if isinstance(parts, list) else parts
    found = re.findall(r"data-figure='(\w+)'><img [^>]*src='data:image/png;base64,([^']+)'", text)
    return {name: base64.b64decode(data) for name, data in found}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_robust_section_full(shape: tuple[int, ...]) -> None:
    notes: list[str] = []
    text = "".join(robust_section(TITLE, robust_result(shape), notes))
    assert notes == []
    assert f"<h2>{TITLE}</h2>" in text
    figures = _pngs(text)
    assert set(figures) == {"robustness_curves", "corruption_curves", "adversarial_examples"}
    for png in figures.values():
        assert _png_size(png)[0] > 100
    # the paragraph: clean accuracy, samples, units, range and settings
    assert "Clean accuracy 0.975 on 500 test samples" in text
    assert "before normalisation" in text and "valid range [0, 1]" in text
    assert "PGD 20 steps, 1 restart" in text and "CW-L2 100 steps" in text
    assert "Square 1,000 queries" in text
    # sanity checks: pass, FAIL flagged in red, the large-ε row
    assert "<td>pg" in text and "<td>pass</td>" in text
    assert "<td class='flag'>FAIL</td>" in text
    assert "at ε=0.1: square 0.250 vs pgd 0.310" in text
    assert "large ε=1</td><td>0</td>" in text
    # the minimal attacks' table: formatted distance and share, 'none found' for DeepFool
    assert "<td>CW-L2</td><td>0.4925</td><td>1</td>" in text
    assert "<td>DeepFool L2</td><td>none found</td><td>0</td>" in text
    assert "ε=0.1" in text  # the examples' budget


def test_robust_section_without_optional_keys() -> None:
    notes: list[str] = []
    text = "".join(robust_section(TITLE, robust_result((1, 40), full=False), notes))
    assert notes == []
    assert set(_pngs(text)) == {"robustness_curves"}
    assert "Robust accuracy against the budget ε: L∞ attacks, one line" in text
    assert "unbounded" in text and html.escape("model's input units") in text
    assert "Attacks:" not in text  # no settings given
    assert "Minimal attacks" not in text  # no cw, no deepfool
    assert "<td class='flag'>FAIL</td>" in text and "large ε" not in text


def test_robustness_curves_skip_an_empty_panel() -> None:
    full = robust_result((1, 40))["curves"]
    both = _png_size(plots.robustness_curves(full, 0.975))
    linf = _png_size(plots.robustness_curves({"pgd": full["pgd"]}, 0.975))
    l2 = _png_size(plots.robustness_curves({"cw": full["cw"]}, None))
    assert both[0] > 1.5 * linf[0] and abs(linf[0] - l2[0]) < 0.2 * linf[0]
    with pytest.raises(ValueError):
        plots.robustness_curves({}, 0.9)


def test_adversarial_examples_rgb_and_unbounded() -> None:
    ex = robust_result((3, 8, 8))["examples"]
    one = _png_size(plots.adversarial_examples(ex[:1], 0.0, 1.0))
    two = _png_size(plots.adversarial_examples(ex, None, None))
    assert two[0] > one[0]


def test_a_figure_that_fails_is_a_note() -> None:
    result = robust_result((1, 8, 8))
    result["corruptions"] = {"blur": {"severity": [0, 1], "accuracy": [0.9]}}  # lengths differ
    notes: list[str] = []
    text = "".join(robust_section(TITLE, result, notes))
    assert len(notes) == 1 and "corruption_curves" in notes[0]
    assert set(_pngs(text)) == {"robustness_curves", "adversarial_examples"}


def _compress(robust: bool) -> dict[str, Any]:
    rows = [
        {"variant": "baseline", "accuracy": 0.975, "accuracy_drop_points": 0.0,
         "stored_bytes": 40000, "compression_x": 1.0},
        {"variant": "int8", "accuracy": 0.97, "accuracy_drop_points": 0.5,
         "stored_bytes": 10000, "compression_x": 4.0},
    ]  # fmt: skip
    if not robust:
        return {"rows": rows}
    rows[0] |= {"pgd_accuracy": 0.3125, "transfer_accuracy": 0.3125}
    rows[1] |= {"pgd_accuracy": 0.2875, "transfer_accuracy": 0.4425}
    return {"rows": rows, "robust": {"eps": 0.1, "samples": 500, "steps": 20}}


def test_compress_section_robust_columns() -> None:
    notes: list[str] = []
    text = "".join(compress_section("Compression", _compress(True), notes))
    head = re.search(r"<tr>(<th>.*?)</tr>", text)
    assert head is not None
    heads = re.findall(r"<th>(.*?)</th>", head.group(1))
    i = heads.index("Δ accuracy (points)")
    assert heads[i + 1 : i + 3] == ["PGD accuracy", "transfer accuracy"]
    assert "<td>0.5</td><td>0.2875</td><td>0.4425</td>" in text
    assert "PGD-20 L∞ at ε=0.1 (input units) on 500 test samples" in text
    plain = "".join(compress_section("Compression", _compress(False), notes))
    assert "PGD accuracy" not in plain and "transfer accuracy" not in plain
    assert "PGD-20" not in plain


QUANTIZE = {
    "accuracy": {"fp32": 0.975, "int8": 0.97},
    "ort_vs_fake_quant_top1_agreement": 1.0,
    "ort_vs_fake_quant_max_abs_logit_diff": 0.01,
    "bytes": {"fp32": 40000, "int8": 10000},
    "quantized_layers": ["fc1"],
    "float_layers": [],
    "folded_batch_norms": [],
    "config": {"bits": 8},
}


def test_quantize_section_robustness_table() -> None:
    robust = {
        "eps": 0.1, "samples": 500, "steps": 20, "square_queries": 1000,
        "rows": [
            {"variant": "fp32 (PyTorch)", "clean_accuracy": 0.975, "pgd_accuracy": 0.5},
            {"variant": "fake-quant (PyTorch)", "clean_accuracy": 0.97, "pgd_accuracy": 0.4875,
             "transfer_accuracy": 0.5225},
            {"variant": "int8 (ONNX Runtime)", "clean_accuracy": 0.97,
             "transfer_accuracy": 0.5175, "square_accuracy": 0.6125},
            {"variant": "fp32 (ONNX Runtime)", "clean_accuracy": 0.975,
             "transfer_accuracy": 0.5, "square_accuracy": 0.605},
        ],
    }  # fmt: skip
    notes: list[str] = []
    plain = "".join(quantize_section("Quantization", QUANTIZE, notes))
    assert "Robustness of the int8 model" not in plain
    text = "".join(quantize_section("Quantization", {**QUANTIZE, "robust": robust}, notes))
    assert "<h3>Robustness of the int8 model</h3>" in text
    assert "Square attack (1,000 queries)" in text and "PGD-20" in text
    heads = ["variant", "clean accuracy", "PGD accuracy", "transfer accuracy", "Square accuracy"]
    assert "".join(f"<th>{h}</th>" for h in heads) in text
    assert (
        "<td>int8 (ONNX Runtime)</td><td>0.97</td><td></td><td>0.5175</td><td>0.6125</td>" in text
    )
    assert "<td>fp32 (PyTorch)</td><td>0.975</td><td>0.5</td><td></td><td></td>" in text


def test_render_report_includes_the_robust_section() -> None:
    result = {
        "recipe": {"name": "robust-test"},
        "robust": robust_result((1, 8, 8)),
        "compress": _compress(True),
    }
    page = render_report(result)
    assert "could not be" not in page
    assert f"<h2>{TITLE}</h2>" in page
    assert {"robustness_curves", "corruption_curves", "adversarial_examples"} <= set(_pngs(page))
    # the run's order: robustness before compression
    assert page.index(f"<h2>{TITLE}</h2>") < page.index("PGD-20 L∞")
