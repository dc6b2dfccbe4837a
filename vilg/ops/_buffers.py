"""Describing torch tensors to the kernels as borrowed buffers (TensorRef)."""

from __future__ import annotations

import contextlib

import torch

from vilg._ext import C

_DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int32: 3,
    torch.int64: 4,
    torch.uint8: 5,
}


def ref(t: torch.Tensor | None):
    """A TensorRef of `t` (None stays None). The tensor must outlive the kernel call."""
    if t is None:
        return None
    return C().TensorRef(
        t.data_ptr(),
        _DTYPE_CODES[t.dtype],
        list(t.shape),
        list(t.stride()),
        t.device.index if t.is_cuda else -1,
    )


def stream_of(t: torch.Tensor) -> int:
    """The raw handle of torch's current stream on t's device (0 for the CPU)."""
    if t.is_cuda:
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def profiled(name: str):
    """The op's name as a profiler range on an eager path that skips the custom op (what the
    op would show in a trace); nothing when no profiler runs."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
