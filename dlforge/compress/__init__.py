"""Model compression: quantization now; pruning, distillation and low-rank come next."""
