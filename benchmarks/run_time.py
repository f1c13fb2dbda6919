"""Wall time of the default `dlforge run` (a fresh process, as a user starts it).

The budget is one minute on 2 cores; the ratio printed is time / budget. The stage timings
come from the run's own metrics.json.

    python benchmarks/run_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import median, save, table, timed

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    walls, stages = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "dlforge", "-q", "run", str(ROOT / "recipes/default.yaml"),
                   "--set", f"output_dir={out}"]  # fmt: skip
            t, _ = timed(lambda c=cmd: subprocess.run(c, check=True, capture_output=True))
            walls.append(t)
            metrics = json.loads((Path(out) / "default/metrics.json").read_text())
            stages.append(metrics["timings"])
            accuracy = metrics["evaluate"]["summary"]["accuracy"]
    rows = [{"measure": "wall time, whole process (s)", "median": median(walls), "budget": BUDGET_S,
             "ratio to budget": median(walls) / BUDGET_S}]  # fmt: skip
    for key in stages[0]:
        rows.append({"measure": f"stage '{key}' (s)", "median": median([s[key] for s in stages]),
                     "budget": "", "ratio to budget": ""})  # fmt: skip
    print(f"\n## Default `dlforge run` ({args.repeats} runs)\n")
    print(table(rows))
    print(f"\ntest accuracy of the default run: {accuracy:.4f}")
    save("run_time", {"walls": walls, "stages": stages, "accuracy": accuracy})


if __name__ == "__main__":
    main()
