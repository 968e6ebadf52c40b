"""Acceleration: the compiled fast path, CUDA graphs, feature reuse (DeepCache), ahead-of-time UNet packages."""
