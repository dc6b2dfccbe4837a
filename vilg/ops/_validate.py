"""Input checks for every op, in one place, raising clear TypeError / ValueError."""

from __future__ import annotations

import functools

import torch

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# CUDA kernels: float16 / bfloat16 run on tensor cores, float32 on the SIMT reference path; all
# three need these head dims, 64 x 64 tiles, and batch and heads within a grid dimension.
CUDA_HEAD_DIMS = (32, 64, 128)
CUDA_BLOCK = 64
CUDA_MAX_GRID_YZ = 65535


def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (or a NumPy/CuPy array), got {type(x)}")
    return x


def float_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def same_device(ts: dict[str, torch.Tensor]) -> torch.device:
    devices = {n: t.device for n, t in ts.items()}
    first = next(iter(devices.values()))
    for n, d in devices.items():
        if d != first:
            raise ValueError(f"all inputs must be on one device: {devices}")
    if first.type not in ("cpu", "cuda"):
        raise ValueError(f"vilg runs on cpu or cuda tensors, got device {first}")
    return first


def unit_last_stride(t: torch.Tensor, name: str) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}; "
            "call .contiguous() first"
        )


@functools.cache
def _has_cuda_kernels() -> bool:
    from vilg._ext import C

    return bool(C().build_info()["cuda"])


def cuda_built() -> None:
    if not _has_cuda_kernels():
        raise RuntimeError(
            "got CUDA tensors, but this build of vilg has no CUDA kernels: reinstall with nvcc "
            "on the PATH (see README, 'Building')"
        )


def text_lens(lens, batch: int, text_len: int, device: torch.device) -> torch.Tensor | None:
    """int32 [batch] on `device`; values must lie in [0, text_len] (checked for CPU input;
    CUDA-resident values are clamped by the kernels, to avoid a device sync per call)."""
    if lens is None:
        return None
    if text_len == 0:
        raise ValueError("text_lens given, but the layout has no text segment")
    lens = torch.as_tensor(lens)
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.is_complex():
        raise TypeError(f"text_lens must hold integers, got {lens.dtype}")
    if lens.shape != (batch,):
        raise ValueError(f"text_lens must have shape [{batch}], got {list(lens.shape)}")
    if not lens.is_cuda and ((lens < 0) | (lens > text_len)).any():
        raise ValueError(f"text_lens values must lie in [0, {text_len}], got {lens.tolist()}")
    return lens.to(device=device, dtype=torch.int32).contiguous()


def attention(q, k, v, layout) -> None:
    from vilg.layouts import Layout

    q, k, v = tensor(q, "q"), tensor(k, "k"), tensor(v, "v")
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a vilg.layouts.Layout, got {type(layout)}")
    for n, t in (("q", q), ("k", k), ("v", v)):
        float_dtype(t, n)
        if t.dim() != 4:
            raise ValueError(f"{n} must be [batch, heads, seq, head_dim], got {list(t.shape)}")
        unit_last_stride(t, n)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    device = same_device({"q": q, "k": k, "v": v})
    if not q.shape == k.shape == v.shape:
        raise ValueError(
            f"q, k, v must have the same shape, got {list(q.shape)}, {list(k.shape)}, "
            f"{list(v.shape)}"
        )
    if q.shape[2] != layout.seq_len:
        raise ValueError(f"sequence length {q.shape[2]} differs from the layout's {layout.seq_len}")
    d = q.shape[3]
    if device.type == "cuda":
        cuda_built()
        if d not in CUDA_HEAD_DIMS:
            raise ValueError(f"CUDA sparse_attention supports head_dim {CUDA_HEAD_DIMS}, got {d}")
        if layout.block_size != CUDA_BLOCK:
            raise ValueError(f"CUDA sparse_attention needs layouts with block_size={CUDA_BLOCK}")
        if q.shape[0] > CUDA_MAX_GRID_YZ or q.shape[1] > CUDA_MAX_GRID_YZ:
            raise ValueError(
                f"CUDA sparse_attention supports at most {CUDA_MAX_GRID_YZ} samples and heads, "
                f"got batch {q.shape[0]}, heads {q.shape[1]}"
            )
    elif not 1 <= d <= 256:
        raise ValueError(f"head_dim must be in 1..256, got {d}")
