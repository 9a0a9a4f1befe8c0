"""Optimization and export: pruning, QAT, post-training quantization, TFLite with model cards."""
