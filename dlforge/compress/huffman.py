"""Canonical Huffman coding of integer symbols, with the code stored as code lengths only.

Deep Compression's last stage (Han et al., 2016): cluster indices and sparse-index gaps are far
from uniform, so a prefix code saves another 20-30% of their bits.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

import numpy as np


def code_lengths(symbols: np.ndarray) -> dict[int, int]:
    """Huffman code length of every symbol that occurs (a lone symbol gets length 1)."""
    counts = Counter(int(s) for s in symbols.ravel())
    if not counts:
        return {}
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    # (frequency, tie-breaker, symbols in this subtree)
    heap = [(c, i, [s]) for i, (s, c) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), assigned in (length, symbol) order as in DEFLATE."""
    codes, code, prev = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= length - prev
        codes[symbol] = (code, length)
        code += 1
        prev = length
    return codes


@dataclass
class Encoded:
    data: bytes
    n_bits: int
    n_symbols: int
    lengths: dict[int, int]

    def table_bytes(self) -> int:
        """What storing the code costs: one (symbol, length) byte pair per symbol."""
        return 2 * len(self.lengths)


def encode(symbols: np.ndarray) -> Encoded:
    lengths = code_lengths(symbols)
    codes = canonical_codes(lengths)
    bits: list[str] = [format(codes[int(s)][0], f"0{codes[int(s)][1]}b") for s in symbols.ravel()]
    stream = "".join(bits)
    packed = (
        np.packbits(np.frombuffer(stream.encode(), dtype=np.uint8) - ord("0"))
        if stream
        else np.zeros(0, np.uint8)
    )
    return Encoded(packed.tobytes(), len(stream), int(symbols.size), lengths)


def decode(encoded: Encoded) -> np.ndarray:
    if encoded.n_symbols == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(encoded.data, dtype=np.uint8))[: encoded.n_bits]
    lookup = {(length, code): s for s, (code, length) in canonical_codes(encoded.lengths).items()}
    out = np.empty(encoded.n_symbols, dtype=np.int64)
    code = length = n = 0
    for bit in bits.tolist():
        code, length = (code << 1) | bit, length + 1
        symbol = lookup.get((length, code))
        if symbol is not None:
            out[n] = symbol
            n += 1
            code = length = 0
    if n != encoded.n_symbols:
        raise ValueError(f"corrupt Huffman stream: decoded {n} of {encoded.n_symbols} symbols")
    return out
