"""Model compression, each technique a function on any ``nn.Module``: quantization
(``quantize/``: the arithmetic, observers, PTQ, QAT, weight sharing, mixed precision),
unstructured pruning (``prune``), structured channel pruning with surgery (``structured``),
knowledge distillation (``distill``), low-rank factorisation (``lowrank``), Huffman coding and
the Deep Compression pipeline (``huffman``, ``deep_compression``). The compress stage that runs
them side by side is ``dlforge/stages/compress.py``."""
