"""The evaluate section of a recipe (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlforge.config import Config, check


@dataclass
class EvalConfig(Config):
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 256
    calibration_bins: int = 15
    clustering: bool = True  # cluster the penultimate-layer embeddings

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.calibration_bins >= 1, "calibration_bins", self.calibration_bins, "must be >= 1")


@dataclass
class CrossValConfig(Config):
    """k-fold cross-validation on the training pool (``dlforge cv``, or a recipe's
    ``crossval:`` stage)."""

    enabled: bool = False
    folds: int = 5
    kind: Literal["stratified", "group", "repeated"] = "stratified"
    repeats: int = 2  # repeated: how many times the stratified folds are redrawn

    def validate(self) -> None:
        check(self.folds >= 2, "folds", self.folds, "must be >= 2")
        check(self.repeats >= 1, "repeats", self.repeats, "must be >= 1")


@dataclass
class EnsembleConfig(Config):
    """An ensemble beside the single model (a recipe's ``ensemble:`` stage)."""

    enabled: bool = False
    # seeds: members from other initialisations and batch orders; bagging: each on a bootstrap
    # sample; snapshot: one run with cyclic cosine rates, a member at the end of each cycle.
    # easy: EasyEnsemble (Liu et al. 2009), each on its own balanced under-sample.
    kind: Literal["seeds", "bagging", "snapshot", "easy"] = "seeds"
    members: int = 5
    voting: Literal["soft", "hard"] = "soft"
    bench: bool = True  # time the ensemble against the single model on ONNX Runtime

    def validate(self) -> None:
        check(self.members >= 2, "members", self.members, "must be >= 2")
