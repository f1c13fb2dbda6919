"""Compression settings that recipes hold (no torch here: loading a recipe stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from dlforge.config import Config, check
from dlforge.train.config import FineTune


@dataclass
class DeepCompressionConfig(Config):
    """Deep Compression (Han et al., 2016): gradual pruning while fine-tuning, BN folded,
    k-means weight sharing with centroid fine-tuning, Huffman-coded relative indices."""

    sparsity: float = 0.9
    prune_share: float = 0.5  # share of the pruning epochs that raise sparsity; the rest recover
    finetune: FineTune = field(default_factory=lambda: FineTune(epochs=20, lr=1e-3))
    weight_bits: int = 4  # 2^bits shared weights per layer
    # Centroid fine-tuning after sharing (BN is folded by then, hence the small rate). Both
    # phases read the training loader given to deep_compression(): batch size and order come
    # from it (the compress stage builds it from finetune.batch_size and finetune.seed).
    codebook: FineTune = field(
        default_factory=lambda: FineTune(epochs=2, lr=1e-4, schedule="constant")
    )
    index_bits_conv: int = 8  # the paper's choice: 8 bits for conv, 5 for fully connected
    index_bits_linear: int = 5
    # Fold batch norm into the convs first: the deployed model has no BN, so its four vectors
    # per channel need not be stored (they were half of a small CNN's compressed file).
    fold_bn: bool = True
    # Leave layers Deep Compression cannot handle (see compress/checks.py) as they are, listed,
    # instead of refusing the model before any training.
    skip_unsupported: bool = False

    MOVED: ClassVar[dict[str, str]] = {
        "prune_epochs": "finetune.epochs",
        "lr": "finetune.lr",
        "codebook_epochs": "codebook.epochs",
        "codebook_lr": "codebook.lr",
        "label_smoothing": "finetune.label_smoothing",
    }

    def validate(self) -> None:
        check(0 <= self.sparsity < 1, "sparsity", self.sparsity, "must be in [0, 1)")
        check(0 < self.prune_share <= 1, "prune_share", self.prune_share, "must be in (0, 1]")
        check(self.finetune.epochs >= 1, "finetune.epochs", self.finetune.epochs, "must be >= 1")
        check(1 <= self.weight_bits <= 8, "weight_bits", self.weight_bits, "must be in 1..8")
        for key in ("index_bits_conv", "index_bits_linear"):
            check(1 <= getattr(self, key) <= 16, key, getattr(self, key), "must be in 1..16")


@dataclass
class ChannelPrune(Config):
    amount: float = 0.5  # fraction of channels removed from each prunable space
    criterion: Literal["l1", "l2", "bn_scale"] = "l1"
    # Or aim at compute: remove this share of the conv/linear multiply-accumulates; the uniform
    # amount that comes closest is found by a scan (a conv between two pruned spaces loses about
    # 1 - (1 - amount)^2 of its MACs, so half the MACs is about 30% of the channels).
    macs_removed: float | None = None
    # Keep a multiple of this many channels: ONNX Runtime's CPU convs work in blocks of 8/16
    # channels, and odd widths can run slower than the unpruned model (half the MACs of the
    # digits CNN at 22/45 channels did, in benchmarks/compress_ablations.py).
    round_to: int = 1
    # Share of each attention module's heads removed (at least one kept), ranked by Michel et
    # al.'s gradient importance when prune_channels gets data, else by weight norm. The channel
    # amount (or the MAC scan) applies to the other spaces, feed-forward units among them.
    heads: float = 0.0
    # torch attention modules that cannot be rewritten as dlforge's (decoders, add_bias_kv) are
    # refused; set this to leave them whole instead (their inputs are then kept whole too).
    skip_unsupported: bool = False

    def validate(self) -> None:
        check(0 <= self.amount < 1, "amount", self.amount, "must be in [0, 1)")
        check(0 <= self.heads < 1, "heads", self.heads, "must be in [0, 1)")
        if self.macs_removed is not None:
            check(0 < self.macs_removed < 1, "macs_removed", self.macs_removed, "must be in (0, 1)")
        check(self.round_to >= 1, "round_to", self.round_to, "must be >= 1")
