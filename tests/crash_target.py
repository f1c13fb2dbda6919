"""The process the crash test kills: ``dlforge train ... --resume`` run from a forkserver child,
so each restart skips the seconds of importing torch (the server imported it once)."""

from __future__ import annotations

import sys


def train(argv: list[str]) -> None:
    from dlforge.cli import main

    sys.exit(main(argv))
