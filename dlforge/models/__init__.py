"""Models: a registry of ready architectures and the ``create_model`` factory."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.models.config import ModelConfig
    from dlforge.models.registry import create_model, list_models, register_model, resolve_factory
    from dlforge.models.resnet import BasicBlock, ResNet

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "config": ["ModelConfig"],
        "registry": ["create_model", "list_models", "register_model", "resolve_factory"],
        "resnet": ["BasicBlock", "ResNet"],
    },
)
