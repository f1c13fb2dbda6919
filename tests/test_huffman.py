from __future__ import annotations

import numpy as np
import pytest

from dlforge.compress.huffman import (
    Encoded,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    pack_lengths,
    unpack_lengths,
)


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


def test_decode_refuses_bits_beyond_the_symbols() -> None:
    enc = encode(np.array([0, 1, 1, 2, 0, 0]))
    extra = Encoded(enc.data, enc.n_bits, enc.n_symbols - 1, enc.lengths)
    with pytest.raises(ValueError, match="bits left"):
        decode(extra)  # once an IndexError
    assert enc.n_bits == 9  # 0 10 10 11 0 0, then 7 padding bits
    padded = bytes([enc.data[0], enc.data[1] | 1])
    with pytest.raises(ValueError, match="padding"):
        decode(Encoded(padded, enc.n_bits, enc.n_symbols, enc.lengths))
    with pytest.raises(ValueError, match="complete code"):
        decode(Encoded(enc.data, enc.n_bits, enc.n_symbols, {0: 1, 1: 2, 2: 3}))


@pytest.mark.parametrize(
    "lengths",
    [
        {},
        {5: 1},
        {0: 1, 1: 2, 2: 2},
        dict(zip(range(17), [2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 7, 8, 8], strict=True)),
        {0: 1, 3: 3, 4: 3, 255: 3, 1000: 3},  # far symbols: the sparse layout
    ],
)
def test_length_tables_round_trip_and_are_small(lengths: dict[int, int]) -> None:
    if len(lengths) > 1:  # a complete code, as code_lengths gives
        longest = max(lengths.values())
        fill = (1 << longest) - sum(1 << (longest - n) for n in lengths.values())
        lengths = {**lengths, **{2000 + i: longest for i in range(fill)}}
    packed = pack_lengths(lengths)
    assert unpack_lengths(b"xy" + packed + b"z", 2) == (lengths, 2 + len(packed))
    assert len(packed) <= 1 + 2 * len(lengths)  # the old cost was 2 bytes per symbol


def test_dense_layout_for_every_symbol_present() -> None:
    rng = np.random.default_rng(0)
    enc = encode(rng.integers(0, 17, size=500))
    assert len(enc.lengths) == 17
    assert enc.table_bytes() <= 1 + (17 * 4 + 9 + 4) // 8  # 4-bit lengths, no symbol numbers


@pytest.mark.parametrize("seed", range(3))
def test_corrupt_tables_raise_value_error_only(seed: int) -> None:
    rng = np.random.default_rng(seed)
    packed = pack_lengths(code_lengths(rng.geometric(0.2, size=400)))
    for at in range(len(packed)):
        for value in (0x00, 0xFF, int(rng.integers(256))):
            data = packed[:at] + bytes([value]) + packed[at + 1 :]
            try:
                _, end = unpack_lengths(data)
            except ValueError:
                continue
            assert end <= len(data)
        with pytest.raises(ValueError):
            unpack_lengths(packed[:at])
