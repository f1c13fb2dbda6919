"""Training a recipe's model: the one place that turns a recipe into a Trainer.

The run's training, every cross-validation fold and every ensemble member go through ``fit``, so
they share the step (augmentation included), the callbacks and, under ``torchrun``, the
sharding of the training data over processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

log = logging.getLogger("dlforge.train")

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Sampler

    from dlforge.data import DataBundle
    from dlforge.recipe import Recipe
    from dlforge.train import Callback, Step, Trainer
    from dlforge.train.runtime import Runtime


def make_model(recipe: Recipe, data: DataBundle, seed: int | None = None) -> nn.Module:
    """The recipe's model for ``data``, initialised from ``seed`` (default: the recipe's)."""
    import torch

    from dlforge.models import create_model

    torch.manual_seed(recipe.seed if seed is None else seed)
    return create_model(
        recipe.model.name, data.input_shape, data.num_classes, **recipe.model.kwargs
    )


def make_step(recipe: Recipe, data: DataBundle) -> Step:
    """Classification with the recipe's label smoothing and, when configured, augmentation;
    with ``train.adversarial`` an adversarial step (PGD, TRADES or fast FGSM) instead."""
    from dlforge.config import ConfigError
    from dlforge.data.augment import BatchAugment
    from dlforge.train import ClassificationStep
    from dlforge.train.losses import class_counts, make_loss

    augment = BatchAugment(recipe.data.augment, data.num_classes)
    name = recipe.train.loss.name
    mixes = recipe.data.augment.mix.mixup_alpha > 0 or recipe.data.augment.mix.cutmix_alpha > 0
    if name not in ("cross_entropy", "weighted") and mixes:
        raise ConfigError(
            f"train.loss.name '{name}' takes class ids; mixup/cutmix make soft targets: switch "
            "one of them off", "train.loss.name",
        )  # fmt: skip
    if name not in ("cross_entropy", "weighted") and recipe.train.label_smoothing:
        raise ConfigError(
            f"train.loss.name '{name}' has no label smoothing; set train.label_smoothing to 0",
            "train.label_smoothing",
        )
    loss = make_loss(
        recipe.train.loss,
        class_counts(data.train[1], data.num_classes),
        recipe.train.label_smoothing,
    )
    adversarial = recipe.train.adversarial
    if adversarial.enabled:  # train on attacked inputs (PGD, TRADES or fast FGSM)
        from dlforge.robust.suite import build_space
        from dlforge.robust.training import AdversarialStep

        return AdversarialStep(
            adversarial, build_space(data, adversarial.bounds), loss,
            recipe.train.label_smoothing, augment if augment.active else None, seed=recipe.seed,
        )  # fmt: skip
    return ClassificationStep(
        loss_fn=loss,
        label_smoothing=recipe.train.label_smoothing,
        augment=augment if augment.active else None,
    )


def make_trainer(
    recipe: Recipe,
    data: DataBundle,
    model: nn.Module,
    *,
    out_dir: Path | None = None,
    meta: dict[str, Any] | None = None,
    callbacks: Iterable[Callback] = (),
    runtime: Runtime | None = None,
    train_config: Any = None,
) -> Trainer:
    from dlforge.train import Trainer

    return Trainer(
        model,
        train_config or recipe.train,
        step=make_step(recipe, data),
        callbacks=callbacks,
        out_dir=out_dir,
        meta=meta,
        runtime=runtime,
    )


def train_with(
    trainer: Trainer,
    recipe: Recipe,
    data: DataBundle,
    *,
    seed: int | None = None,
    sampler: Sampler[int] | None = None,
    resume: Path | None = None,
) -> Trainer:
    """Run ``trainer`` on the training split (sharded over processes under torchrun), validating
    on the validation split; ``seed`` sets the batch order."""
    import torch

    seed = recipe.seed if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    batch = trainer.config.batch_size
    kind = recipe.data.imbalance.sampler
    if sampler is None and kind is not None:  # over-/under-/class-balanced sampling
        from dlforge.data.imbalance import make_sampler, resample_counts

        sampler = make_sampler(kind, data.train[1], seed, batch)
        trainer.notes["sampler"] = {"kind": kind,
                                    "counts_after": resample_counts(sampler, data.train[1])}  # fmt: skip
    train = data.loader("train", batch, shuffle=True, generator=generator, sampler=sampler)
    if trainer.runtime.distributed:
        train = trainer.runtime.shard(train, seed)
    trainer.fit(train, data.loader("val", recipe.evaluate.batch_size), resume=resume)
    after_training(trainer, recipe, data, seed)
    return trainer


def after_training(trainer: Trainer, recipe: Recipe, data: DataBundle, seed: int) -> None:
    """Decoupled head re-training and the decision settings (``train.decoupled``,
    ``train.decision``), on the trained model; the best checkpoint is rewritten with them."""
    cfg = recipe.train
    if not cfg.decoupled.enabled and cfg.decision == type(cfg.decision)():
        return
    from dlforge.train.checkpoint import read_meta, save_checkpoint
    from dlforge.train.decision import decide
    from dlforge.train.decoupled import retrain_head

    best = trainer.checkpoint_path("best")
    if trainer.steps_this_fit == 0 and best is not None and best.exists():
        # A finished run resumed: its best weights (now loaded) carry the changes already;
        # applying them again would adjust the logits twice.
        done = read_meta(best).get("after_training")
        if done:
            from dlforge.train.checkpoint import load_weights

            load_weights(best, trainer.model)  # the trainer restored its state's weights
            trainer.notes.update(done)
            if "decision" in done:
                data.preprocessing["decision"] = done["decision"]
            return
    rebalanced = (cfg.decoupled.enabled or recipe.data.imbalance.sampler is not None
                  or recipe.data.imbalance.smote is not None or cfg.loss.name != "cross_entropy")  # fmt: skip
    if cfg.decision.logit_adjust_tau is not None and rebalanced:
        log.warning(
            "post-hoc logit adjustment assumes a model trained with plain cross-entropy on the "
            "imbalanced data; this one was re-balanced already, so it will over-correct"
        )
    model = trainer.model
    if cfg.decoupled.enabled:
        d = cfg.decoupled
        x, y = data.train
        trainer.notes["decoupled"] = retrain_head(
            model, x.to(trainer.device), y, data.num_classes, d.method, d.epochs, d.lr,
            seed=seed, k_neighbors=d.k_neighbors,
        )  # fmt: skip
    decision = decide(model, data, cfg.decision)
    if decision:
        trainer.notes["decision"] = decision
        if trainer.out_dir is not None:  # the run's model (not a fold's or a member's) deploys it
            data.preprocessing["decision"] = decision
    if best is not None and trainer.writes_files and trainer.config.restore_best:
        # The model holds the best weights (restore_best): they go back with the changes. The
        # trainer's own fields (epoch, step, metrics) stay: a resume matches them.
        written = read_meta(best) if best.exists() else trainer.meta
        meta = {**written, "preprocessing": data.preprocessing,
                "after_training": dict(trainer.notes)}  # fmt: skip
        save_checkpoint(best, model, meta)


def fit(
    recipe: Recipe,
    data: DataBundle,
    model: nn.Module,
    *,
    seed: int | None = None,
    callbacks: Iterable[Callback] = (),
    sampler: Sampler[int] | None = None,
    train_config: Any = None,
) -> Trainer:
    """Train ``model`` on ``data`` as the recipe says, writing nothing (cross-validation folds,
    ensemble members); returns the Trainer (its model holds the best weights)."""
    trainer = make_trainer(recipe, data, model, callbacks=callbacks, train_config=train_config)
    return train_with(trainer, recipe, data, seed=seed, sampler=sampler)
