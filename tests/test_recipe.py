from __future__ import annotations

from pathlib import Path

import pytest

from dlforge.config import ConfigError
from dlforge.recipe import Recipe, load_recipe, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "name", ["default.yaml", "mnist1d.yaml", "quantize.yaml", "deep_compression.yaml"]
)
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    assert isinstance(recipe, Recipe)
    assert recipe_from_dict(recipe.to_dict()) == recipe  # the saved recipe rebuilds the same run


def test_unknown_key_names_it_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"train\.optimzer.*did you mean 'optimizer'"):
        recipe_from_dict({"train": {"optimzer": {"lr": 0.1}}})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.optimizer\.lrr'.*'lr'"):
        recipe_from_dict({"train": {"optimizer": {"lrr": 0.1}}})


def test_wrong_type_and_bad_choice_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        recipe_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"train\.optimizer\.name: 'adamm'.*did you mean 'adam"):
        recipe_from_dict({"train": {"optimizer": {"name": "adamm"}}})
    with pytest.raises(ConfigError, match=r"train\.optimizer\.lr: must be positive, got -1"):
        recipe_from_dict({"train": {"optimizer": {"lr": -1}}})


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=-1", r"train\.epochs: must be >= 1, got -1$"),
        ("train.batch_size=0", r"train\.batch_size: must be >= 1, got 0$"),
        ("train.label_smoothing=1.5", r"train\.label_smoothing: must be in \[0, 1\), got 1\.5$"),
        ("train.schedule.warmup_steps=-3", r"train\.schedule\.warmup_steps: .*got -3$"),
        ("train.early_stopping.patience=-2", r"train\.early_stopping\.patience: .*got -2$"),
        ("data.val_fraction=1.2", r"data\.val_fraction: must be in \(0, 1\), got 1\.2$"),
        ("evaluate.split=tset", r"evaluate\.split: 'tset' is not one of .*did you mean 'test'"),
        ("quantize.weight_bits=12", r"quantize\.weight_bits: must be in 2\.\.8, got 12$"),
        ("bench.threads=0", r"bench\.threads: must be >= 1, got 0$"),
        ("name=a/b", r"name: must be a plain folder name, got 'a/b'$"),
    ],
)
def test_every_bad_value_names_its_key_and_value(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        recipe_from_dict({}, [override])


def test_python_configs_validate_when_built() -> None:
    """The same rules and messages as a recipe: a typo never falls back to a default."""
    from dlforge.compress.prune import MagnitudePrune
    from dlforge.train import OptimizerConfig, ScheduleConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"OptimizerConfig\.name: 'sgdd' is not one of.*'sgd'"):
        OptimizerConfig(name="sgdd")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ScheduleConfig\.name: 'cosin'.*did you mean 'cosine'"):
        ScheduleConfig(name="cosin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"TrainConfig\.epochs: must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"TrainConfig\.epochs: expected an integer, got '3'"):
        TrainConfig(epochs="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"MagnitudePrune\.amount: must be in \[0, 1\), got 1\.5"):
        MagnitudePrune(amount=1.5)
    # Ints widen to floats and mappings become nested configs, as in a recipe.
    cfg = TrainConfig(optimizer={"name": "sgd", "lr": 1})  # type: ignore[arg-type]
    assert isinstance(cfg.optimizer, OptimizerConfig) and cfg.optimizer.lr == 1.0


def test_bad_compress_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"compress\.structured\.macs_removed: .*got 1\.5"):
        recipe_from_dict({"compress": {"structured": {"macs_removed": 1.5}}})
    with pytest.raises(ConfigError, match=r"compress\.structured\.round_to: must be >= 1, got 0"):
        recipe_from_dict({"compress": {"structured": {"round_to": 0}}})
    with pytest.raises(ConfigError, match=r"compress\.prune\.prune_share: .*\(0, 1\], got 0"):
        recipe_from_dict({"compress": {"prune": {"prune_share": 0}}})
    with pytest.raises(ConfigError, match=r"compress\.distill\.temperature: .*got 0"):
        recipe_from_dict({"compress": {"distill": {"temperature": 0}}})


def test_set_overrides_are_typed_and_checked() -> None:
    r = recipe_from_dict(
        {}, ["train.optimizer.lr=1e-3", "train.epochs=3", "model.kwargs.channels=[8, 16]"]
    )
    assert r.train.optimizer.lr == pytest.approx(1e-3) and isinstance(r.train.optimizer.lr, float)
    assert r.train.epochs == 3
    assert r.model.kwargs == {"channels": [8, 16]}
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'.*'epochs'"):
        recipe_from_dict({}, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="key=value"):
        recipe_from_dict({}, ["train.epochs"])


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_recipe(listy)


def test_file_source_needs_path() -> None:
    with pytest.raises(ConfigError, match="data.path: is required for source 'npz'"):
        recipe_from_dict({"data": {"source": "npz"}})


def test_overrides_never_change_the_callers_dict() -> None:
    base = {"train": {"optimizer": {"lr": 0.1}}, "model": {"kwargs": {"channels": [8]}}}
    recipe_from_dict(base, ["train.optimizer.lr=0.5", "model.kwargs.dropout=0.3"])
    assert base == {"train": {"optimizer": {"lr": 0.1}}, "model": {"kwargs": {"channels": [8]}}}
