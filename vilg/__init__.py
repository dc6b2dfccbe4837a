"""vilg: block-sparse attention kernels and a bidirectional text<->image model."""

from vilg._ext import build_info

__version__ = "0.1.0"
__all__ = ["build_info", "__version__"]
