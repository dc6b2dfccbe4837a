"""vilg's kernels as torch ops (CPU and CUDA), also callable on NumPy / CuPy arrays."""

from vilg.ops.attention import sparse_attention

__all__ = ["sparse_attention"]
