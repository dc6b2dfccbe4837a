"""Vector quantisation as torch custom ops: nearest-code lookup, code embedding, code statistics.

CUDA index errors. The CUDA `vq_embed` and `vq_code_stats` do not synchronise to validate
indices: an out-of-range index gives a zero row (embed) or is skipped (stats), and is recorded
in a per-device error buffer, which a device-side assertion right after the kernel checks: the
next synchronising CUDA call fails with "device-side assert triggered" (no silent zero rows;
inside a CUDA graph it fires at replay). `check=True` on either op instead synchronises and
raises a ValueError that names the index, through `vq_check_indices(device)` (which raises if
any call since the previous check met a bad index, and clears the record). CPU calls always
validate (cheaply) and raise immediately.
"""

from __future__ import annotations

import torch

from vilg._ext import C
from vilg.ops import _validate
from vilg.ops._arrays import accepts_arrays
from vilg.ops._buffers import ref, stream_of

_ERR: dict[torch.device, torch.Tensor] = {}


def _err_buffer(device: torch.device):
    """The per-device [count, one bad index] int64 record (None on the CPU)."""
    if device.type != "cuda":
        return None
    device = torch.device("cuda", device.index if device.index is not None else 0)
    buf = _ERR.get(device)
    if buf is None:
        buf = torch.zeros(2, dtype=torch.int64, device=device)
        _ERR[device] = buf
    return buf


def _device_index(t: torch.Tensor) -> int:
    return t.device.index if t.is_cuda else -1


def vq_check_indices(device=None) -> None:
    """Raise ValueError if a CUDA vq_embed / vq_code_stats call on `device` (default: the
    current CUDA device) met an out-of-range index since the last check; clears the record.
    Synchronises with the device; a no-op for the CPU."""
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        return
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    buf = _ERR.get(device)
    if buf is None:
        return
    count, bad = buf.tolist()
    if count:
        buf.zero_()
        raise ValueError(
            f"{count} code index(es) out of range in earlier CUDA VQ calls on {device} "
            f"(e.g. {bad}); their embedding rows were zero-filled / statistics skipped"
        )


# ---- quantize -------------------------------------------------------------------------------
# The schema is written out: torch before 2.7 cannot infer it from string annotations
# (tests/test_torch_compat.py checks it against the inferred one).
@torch.library.custom_op(
    "vilg::vq_quantize",
    mutates_args=(),
    schema="(Tensor x, Tensor codebook, bool fast_fp32) -> Tensor",
)
def _quantize(x: torch.Tensor, codebook: torch.Tensor, fast_fp32: bool) -> torch.Tensor:
    n = x.shape[0]
    k, d = codebook.shape
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    ws = torch.empty(
        C().vq_workspace_floats(n, k, d, _device_index(x)), dtype=torch.float32, device=x.device
    )
    C().vq_quantize(ref(x), ref(codebook), ref(out), ref(ws), fast_fp32, stream_of(x))
    return out


@_quantize.register_fake
def _(x, codebook, fast_fp32):
    return x.new_empty(x.shape[0], dtype=torch.int64)


@accepts_arrays
def vq_quantize(x, codebook, *, fast_fp32: bool = False) -> torch.Tensor:
    """Index of the nearest code (squared L2; exact ties go to the lowest index) for every row.

    x: [..., dim]; codebook: [num_codes, dim]; same float dtype (float32 / float16 / bfloat16,
    float32 accumulation), last dims contiguous. Returns int64 [...]. Never materialises the
    rows x codes distance matrix. `fast_fp32` (CUDA, float32 only) scores on tensor cores with
    split-TF32 (about float32 accuracy, not bit-identical to the default FMA path).
    Not differentiable.
    """
    _validate.vq_quantize(x, codebook)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[-1] > 1 and flat.stride(-1) != 1:  # pragma: no cover - reshape keeps it
        flat = flat.contiguous()
    return _quantize(flat, codebook, bool(fast_fp32)).reshape(lead)


# ---- embed ----------------------------------------------------------------------------------
@torch.library.custom_op(
    "vilg::vq_embed",
    mutates_args=(),
    schema="(Tensor indices, Tensor codebook, bool device_assert) -> Tensor",
)
def _embed(indices: torch.Tensor, codebook: torch.Tensor, device_assert: bool) -> torch.Tensor:
    out = codebook.new_empty(indices.shape[0], codebook.shape[1])
    err = _err_buffer(codebook.device)
    C().vq_embed(ref(indices), ref(codebook), ref(out), ref(err), stream_of(codebook))
    if device_assert:
        _assert_no_bad_index(err)
    return out


@_embed.register_fake
def _(indices, codebook, device_assert):
    return codebook.new_empty(indices.shape[0], codebook.shape[1])


def _assert_no_bad_index(err: torch.Tensor | None) -> None:
    """CUDA: a device-side assertion on the error record (no sync); the CPU raised already."""
    if err is not None:
        _validate.device_check(
            err[0] == 0, "vilg: a code index was out of range in a CUDA VQ call (vq_embed / "
            "vq_code_stats); pass check=True for a ValueError naming it"
        )


def _embed_setup(ctx, inputs, output):
    indices, codebook, _ = inputs
    ctx.save_for_backward(indices)
    ctx.num_codes = codebook.shape[0]
    ctx.dtype = codebook.dtype


def _embed_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    g = grad.new_zeros(ctx.num_codes, grad.shape[1], dtype=torch.float32)
    g.index_add_(0, indices.long(), grad.float())
    return None, g.to(ctx.dtype), None


_embed.register_autograd(_embed_backward, setup_context=_embed_setup)


def _flat_indices(indices: torch.Tensor) -> torch.Tensor:
    flat = indices.reshape(-1)
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.to(torch.int64)
    return flat.contiguous()


@accepts_arrays
def vq_embed(indices, codebook, *, check: bool = False) -> torch.Tensor:
    """codebook[indices]: [..., dim] in the codebook's dtype (differentiable w.r.t. codebook).

    indices: any integer tensor on the codebook's device. Out-of-range indices raise
    ValueError on the CPU; on CUDA they fail a device-side assertion, or with `check=True` a
    ValueError right away (synchronising; see the module docstring).
    """
    _validate.vq_embed(indices, codebook)
    flat = _flat_indices(indices)
    out = _embed(flat, codebook, not check).reshape(*indices.shape, codebook.shape[1])
    if check:
        vq_check_indices(codebook.device)
    return out


# ---- code statistics ------------------------------------------------------------------------
@torch.library.custom_op(
    "vilg::vq_code_stats",
    mutates_args=(),
    schema="(Tensor indices, Tensor x, SymInt num_codes, bool device_assert) -> (Tensor, Tensor)",
)
def _code_stats(
    indices: torch.Tensor, x: torch.Tensor, num_codes: int, device_assert: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    counts = torch.empty(num_codes, dtype=torch.float32, device=x.device)
    sums = torch.empty(num_codes, d, dtype=torch.float32, device=x.device)
    ws = None
    if not x.is_cuda:
        ws = torch.empty(n + num_codes + 1, dtype=torch.int32)
    err = _err_buffer(x.device)
    C().vq_code_stats(ref(indices), ref(x), ref(counts), ref(sums), ref(ws), ref(err), stream_of(x))
    if device_assert:
        _assert_no_bad_index(err)
    return counts, sums


@_code_stats.register_fake
def _(indices, x, num_codes, device_assert):
    return (
        x.new_empty(num_codes, dtype=torch.float32),
        x.new_empty(num_codes, x.shape[1], dtype=torch.float32),
    )


@accepts_arrays
def vq_code_stats(indices, x, num_codes: int, *, check: bool = False):
    """Per-code usage for EMA codebook updates and dead-code detection.

    indices: integer [...]; x: float [..., dim] (same leading shape). Returns (counts float32
    [num_codes], sums float32 [num_codes, dim]): how many rows chose each code and the sum of
    those rows. CPU: deterministic (rows are bucketed by code and summed in row order, in
    float64). CUDA: float32 atomics (sums may differ in the last bits run to run). Not
    differentiable.
    """
    num_codes = _validate.vq_code_stats(indices, x, num_codes)
    flat_x = x.reshape(-1, x.shape[-1])
    out = _code_stats(_flat_indices(indices), flat_x, num_codes, not check)
    if check:
        vq_check_indices(x.device)
    return out
