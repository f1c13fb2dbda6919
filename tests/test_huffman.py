from __future__ import annotations

import numpy as np
import pytest

from dlforge.compress.huffman import canonical_codes, code_lengths, decode, encode


def entropy_bits(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_and_optimal_length(seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.geometric(0.3, size=5000) - 1
    enc = encode(symbols)
    assert np.array_equal(decode(enc), symbols)
    mean = enc.n_bits / len(symbols)
    h = entropy_bits(symbols)
    assert h <= mean < h + 1  # Shannon's bound for a prefix code
    assert len(enc.data) == (enc.n_bits + 7) // 8


def test_known_code() -> None:
    # Frequencies 45, 13, 12, 16, 9, 5 (the CLRS example) give lengths 1, 3, 3, 3, 4, 4.
    symbols = np.repeat(np.arange(6), [45, 13, 12, 16, 9, 5])
    assert code_lengths(symbols) == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    codes = canonical_codes(code_lengths(symbols))
    assert (
        codes[0] == (0b0, 1)
        and codes[1] == (0b100, 3)
        and codes[4] == (0b1110, 4)
        and codes[5] == (0b1111, 4)
    )


def test_edge_cases() -> None:
    one = np.full(10, 7)
    enc = encode(one)
    assert enc.n_bits == 10 and np.array_equal(decode(enc), one)
    assert decode(encode(np.zeros(0, dtype=int))).size == 0
    enc = encode(np.array([1, 2, 3, 1]))
    enc.n_symbols += 1
    with pytest.raises(ValueError, match="corrupt Huffman stream"):
        decode(enc)
