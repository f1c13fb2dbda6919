"""dlforge: train → evaluate → harden → compress → deploy PyTorch models, every step measured."""

import logging

__version__ = "0.8.0"


def log_to_stderr(level: int | str = "INFO") -> None:
    """Print dlforge's news from Python (an epoch line per epoch, each stage's steps), as the
    CLI does; call once. Progress bars show by themselves where a person watches (a terminal or
    a notebook), or with ``TrainConfig(progress=True)``."""
    logger = logging.getLogger("dlforge")
    logger.setLevel(level)
    if not any(getattr(h, "_dlforge", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._dlforge = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
