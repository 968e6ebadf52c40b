"""Acceleration: the compiled fast path, CUDA graphs and feature reuse (DeepCache)."""
