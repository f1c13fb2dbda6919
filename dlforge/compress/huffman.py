"""Canonical Huffman coding of integer symbols, with the code stored as code lengths only.

Deep Compression's last stage (Han et al., 2016): cluster indices and sparse-index gaps are far
from uniform, so a prefix code saves another 20-30% of their bits.

Because the code is canonical, the code lengths alone define it. ``pack_lengths`` writes them
as a small bit-packed table, dense (one length per symbol 0..K-1, 0 meaning absent) or sparse
(Elias-gamma symbol steps plus lengths), whichever is smaller: dense wins for cluster indices
(every symbol occurs), sparse for gap tables with a few far outliers such as the filler gap.
Every reader here checks what it reads and raises ``ValueError`` on a corrupt input.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

import numpy as np

MAX_LENGTH = 255  # code lengths are stored in at most 8 bits
_MAX_GAMMA_ZEROS = 62  # an Elias-gamma number above 2^63 is corrupt data, not a table size


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


def check_lengths(lengths: dict[int, int]) -> None:
    """Raise ``ValueError`` unless ``lengths`` is what ``code_lengths`` can produce: a lone
    symbol of length 1, or a complete prefix code (Kraft sum exactly 1), so that the canonical
    codes cannot overlap and every bit pattern decodes."""
    if any(s < 0 for s in lengths):
        raise ValueError("corrupt Huffman code: negative symbol")
    if any(not 1 <= n <= MAX_LENGTH for n in lengths.values()):
        raise ValueError(f"corrupt Huffman code: a code length outside 1..{MAX_LENGTH}")
    if len(lengths) == 1 and next(iter(lengths.values())) != 1:
        raise ValueError("corrupt Huffman code: a lone symbol must have length 1")
    if len(lengths) > 1:
        longest = max(lengths.values())
        if sum(1 << (longest - n) for n in lengths.values()) != 1 << longest:
            raise ValueError("corrupt Huffman code: code lengths do not form a complete code")


@dataclass
class Encoded:
    data: bytes
    n_bits: int
    n_symbols: int
    lengths: dict[int, int]

    def table_bytes(self) -> int:
        """What storing the code costs: the size of ``pack_lengths(self.lengths)``."""
        return len(pack_lengths(self.lengths))


def encode(symbols: np.ndarray) -> Encoded:
    lengths = code_lengths(symbols)
    words = {
        s: format(code, f"0{length}b") for s, (code, length) in canonical_codes(lengths).items()
    }
    stream = "".join(words[s] for s in symbols.ravel().tolist())
    packed = (
        np.packbits(np.frombuffer(stream.encode(), dtype=np.uint8) - ord("0"))
        if stream
        else np.zeros(0, np.uint8)
    )
    return Encoded(packed.tobytes(), len(stream), int(symbols.size), lengths)


def decode(encoded: Encoded) -> np.ndarray:
    """The symbols back; ``ValueError`` unless the stream holds exactly ``n_symbols`` codes in
    exactly ``n_bits`` bits, with zero padding after them."""
    check_lengths(encoded.lengths)
    n_bits, n_symbols = encoded.n_bits, encoded.n_symbols
    if len(encoded.data) != (n_bits + 7) // 8:
        raise ValueError(f"corrupt Huffman stream: {len(encoded.data)} bytes for {n_bits} bits")
    if n_symbols > n_bits or (n_symbols == 0) != (n_bits == 0):  # each code is >= 1 bit
        raise ValueError(f"corrupt Huffman stream: {n_symbols} symbols in {n_bits} bits")
    bits = np.unpackbits(np.frombuffer(encoded.data, dtype=np.uint8))
    if bits[n_bits:].any():
        raise ValueError("corrupt Huffman stream: nonzero padding bits")
    lookup = {(length, code): s for s, (code, length) in canonical_codes(encoded.lengths).items()}
    longest = max(encoded.lengths.values(), default=0)
    out = np.empty(n_symbols, dtype=np.int64)
    code = length = n = 0
    for bit in bits[:n_bits].tolist():
        if n == n_symbols:
            raise ValueError(f"corrupt Huffman stream: bits left after {n_symbols} symbols")
        code, length = (code << 1) | bit, length + 1
        symbol = lookup.get((length, code))
        if symbol is not None:
            out[n] = symbol
            n += 1
            code = length = 0
        elif length >= longest:
            raise ValueError(f"corrupt Huffman stream: no code matches after symbol {n}")
    if n != n_symbols or length:
        raise ValueError(f"corrupt Huffman stream: decoded {n} of {n_symbols} symbols")
    return out


# --- the code-length table ---------------------------------------------------------------


class _BitWriter:
    def __init__(self) -> None:
        self.value = self.n = 0

    def put(self, value: int, width: int) -> None:
        self.value, self.n = (self.value << width) | value, self.n + width

    def gamma(self, value: int) -> None:
        """Elias gamma code of ``value`` >= 1: 2*floor(log2 value) + 1 bits."""
        width = value.bit_length()
        self.put(0, width - 1)
        self.put(value, width)

    def to_bytes(self) -> bytes:
        n_bytes = (self.n + 7) // 8
        return (self.value << (8 * n_bytes - self.n)).to_bytes(n_bytes, "big")


class _BitReader:
    def __init__(self, data: bytes | memoryview, start: int) -> None:
        self.data, self.pos = data, 8 * start

    def get(self, width: int) -> int:
        end = self.pos + width
        if end > 8 * len(self.data):
            raise ValueError("corrupt Huffman table: it runs past the end of the data")
        first, last = self.pos // 8, (end + 7) // 8
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> (8 * last - end)) & ((1 << width) - 1)

    def gamma(self) -> int:
        zeros = 0
        while self.get(1) == 0:
            zeros += 1
            if zeros > _MAX_GAMMA_ZEROS:
                raise ValueError("corrupt Huffman table: a number is too large")
        return (1 << zeros) | self.get(zeros)


def _gamma_bits(value: int) -> int:
    return 2 * value.bit_length() - 1


def pack_lengths(lengths: dict[int, int]) -> bytes:
    """The code-length table, bit-packed and padded to a byte: 1 bit layout (0 dense, 1 sparse),
    3 bits length width w - 1, then either gamma(K + 1) and K lengths of w bits for symbols
    0..K-1 (0 = absent), or gamma(count + 1) and per symbol gamma(step) and its w-bit length,
    where step is the distance from the previous symbol (the first is counted from -1)."""
    check_lengths(lengths)
    symbols = sorted(lengths)
    width = max(max(lengths.values(), default=1).bit_length(), 1)
    steps = [s - p for s, p in zip(symbols, [-1, *symbols[:-1]])]
    k = symbols[-1] + 1 if symbols else 0
    dense_bits = _gamma_bits(k + 1) + k * width
    sparse_bits = _gamma_bits(len(symbols) + 1) + sum(map(_gamma_bits, steps)) + len(steps) * width
    out = _BitWriter()
    out.put(int(sparse_bits < dense_bits), 1)
    out.put(width - 1, 3)
    if sparse_bits < dense_bits:
        out.gamma(len(symbols) + 1)
        for s, step in zip(symbols, steps):
            out.gamma(step)
            out.put(lengths[s], width)
    else:
        out.gamma(k + 1)
        for s in range(k):
            out.put(lengths.get(s, 0), width)
    return out.to_bytes()


def unpack_lengths(data: bytes | memoryview, start: int = 0) -> tuple[dict[int, int], int]:
    """Read a ``pack_lengths`` table from ``data`` at byte ``start``; returns the lengths and
    the byte offset after the table. ``ValueError`` if it is truncated or not a valid code."""
    bits = _BitReader(data, start)
    sparse, width = bits.get(1), bits.get(3) + 1
    count = bits.gamma() - 1
    if count * (width + (1 if sparse else 0)) > 8 * len(data) - bits.pos:
        raise ValueError("corrupt Huffman table: it runs past the end of the data")
    lengths: dict[int, int] = {}
    symbol = -1
    for i in range(count):
        symbol = symbol + bits.gamma() if sparse else i
        length = bits.get(width)
        if length:
            lengths[symbol] = length
        elif sparse:
            raise ValueError("corrupt Huffman table: a listed symbol has length 0")
    check_lengths(lengths)
    return lengths, (bits.pos + 7) // 8
