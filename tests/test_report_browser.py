"""The report renders in a real browser (headless Chromium) with every figure present."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dlforge.pipeline import run
from dlforge.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"confusion_matrix", "roc", "pr", "reliability", "training_curves", "gradient_norms"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Counts the figures whose image actually decoded, after the page has loaded.
PROBE = """<script>
window.addEventListener('load', () => {
  const ok = [...document.querySelectorAll('figure img')]
    .filter(i => i.complete && i.naturalWidth > 0)
    .map(i => i.closest('figure').dataset.figure);
  document.title = 'RENDERED:' + ok.join(',');
});
</script>"""


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed")
    recipe = load_recipe(
        ROOT / "recipes/default.yaml", [f"output_dir={tmp_path}", "train.epochs=2"]
    )
    report = run(recipe).report_path
    html = report.read_text()
    assert "<script" not in html  # the report itself runs no code
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "profile"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*common, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    match = re.search(r"<title>RENDERED:([^<]*)</title>", dom)
    assert match, "the page did not finish loading"
    assert set(match.group(1).split(",")) == FIGURES
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a page of figures, not a blank screen
