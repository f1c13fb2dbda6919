"""dlforge: train → evaluate → harden → compress → deploy PyTorch models, every step measured."""

__version__ = "0.1.0"
