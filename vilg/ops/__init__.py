"""vilg's kernels as torch ops (CPU and CUDA), also callable on NumPy / CuPy arrays."""

from vilg.ops.attention import sparse_attention

__all__ = ["sparse_attention"]

from vilg.ops.decode import decode_attention  # noqa: E402
from vilg.ops.sampling import sample  # noqa: E402
from vilg.ops.vq import vq_check_indices, vq_code_stats, vq_embed, vq_quantize  # noqa: E402

__all__ += [
    "decode_attention",
    "sample",
    "vq_check_indices",
    "vq_code_stats",
    "vq_embed",
    "vq_quantize",
]
