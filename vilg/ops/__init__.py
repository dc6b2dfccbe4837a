"""vilg's kernels as torch ops (CPU and CUDA), also callable on NumPy / CuPy arrays."""

from vilg.ops.attention import sparse_attention
from vilg.ops.decode import DecodePlan, decode_attention
from vilg.ops.sampling import sample
from vilg.ops.vq import vq_check_indices, vq_code_stats, vq_embed, vq_quantize

__all__ = [
    "DecodePlan",
    "decode_attention",
    "sample",
    "sparse_attention",
    "vq_check_indices",
    "vq_code_stats",
    "vq_embed",
    "vq_quantize",
]
