"""Models: a registry of ready architectures and the ``create_model`` factory."""

from dlforge.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from dlforge.models import mlp as _mlp  # noqa: F401  (registers "mlp", "logistic")
from dlforge.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from dlforge.models.registry import (
    ModelConfig,
    create_model,
    list_models,
    register_model,
    resolve_factory,
)
from dlforge.models.resnet import BasicBlock, ResNet

__all__ = [
    "BasicBlock",
    "ModelConfig",
    "ResNet",
    "create_model",
    "list_models",
    "register_model",
    "resolve_factory",
]
