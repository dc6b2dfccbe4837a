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
    for d in devices.values():
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
            "on the PATH (see the docs, 'Building from source and building wheels')"
        )
    _require_driver()


@functools.cache
def _require_driver() -> None:
    # the driver must be new enough for the CUDA runtime vilg was built with (cached once it is)
    from vilg._ext import C

    C().cuda_require_driver()


def device_check(ok: torch.Tensor, message: str) -> None:
    """Reject without a host sync: `ok` is a 0-dim bool tensor on the data's device. On the CPU
    a False raises RuntimeError(message) at once; on CUDA it is a device-side assertion, so the
    next synchronising CUDA call fails with "device-side assert triggered" (inside a captured
    CUDA graph it fires when the graph replays). Traced by torch.compile (not a graph break)."""
    torch._assert_async(ok, message)


def text_lens(
    lens, batch: int, text_len: int, device: torch.device, name: str = "text_lens"
) -> torch.Tensor | None:
    """int32 [batch] on `device`; values must lie in [0, text_len]: eager CPU values raise
    ValueError here, CUDA-resident values (and any under torch.compile) are checked by a
    device-side assertion (no device sync per call; see `device_check`)."""
    if lens is None:
        return None
    if text_len == 0:
        raise ValueError("text_lens given, but the layout has no text segment")
    lens = torch.as_tensor(lens)
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.is_complex():
        raise TypeError(f"{name} must hold integers, got {lens.dtype}")
    if lens.dim() != 1 or lens.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}], got {list(lens.shape)}")
    if not lens.is_cuda and not torch.compiler.is_compiling():
        if ((lens < 0) | (lens > text_len)).any():
            raise ValueError(f"{name} values must lie in [0, {text_len}], got {lens.tolist()}")
    else:  # reading the values would sync (or break the graph): assert on the device
        ok = ((lens >= 0) & (lens <= text_len)).all()
        device_check(ok, f"vilg: {name} values must lie in [0, {text_len}]")
    return lens.to(device=device, dtype=torch.int32).contiguous()


def key_bounds(starts, lens, batch: int, layout, device: torch.device):
    """Per-sample key padding: sample b keeps the keys at sequence positions
    [key_starts[b], key_lens[b]) (left and right padding; either may be None). The kernels
    express it as a padded segment spanning the whole sequence, which needs sequence order (the
    caller runs a permuted layout's `sequence_order()` twin). Returns int32 (lo, hi), each
    None when not given; bad values raise as text_lens' do (on the device for CUDA tensors)."""
    L = layout.seq_len
    lo = text_lens(starts, batch, L, device, name="key_starts")
    hi = text_lens(lens, batch, L, device, name="key_lens")
    if lo is not None and hi is not None:
        if not lo.is_cuda and not torch.compiler.is_compiling():
            if (lo > hi).any():
                raise ValueError(
                    f"key_starts must not exceed key_lens, got {lo.tolist()} and {hi.tolist()}"
                )
        else:  # no host sync: assert on the device
            device_check((lo <= hi).all(), "vilg: key_starts must not exceed key_lens")
    return lo, hi


def softcap(value) -> float:
    """Soft-capping of the scaled scores (0: off)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"softcap must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"softcap must be finite and >= 0 (0: off), got {value}")
    return value


def alibi_slopes(slopes, batch: int, heads: int, device: torch.device) -> torch.Tensor | None:
    """ALiBi slopes, float32 [heads] or [batch, heads] on `device` (made contiguous)."""
    if slopes is None:
        return None
    slopes = tensor(slopes, "alibi_slopes")
    if slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes must be float32, got {slopes.dtype}")
    if list(slopes.shape) not in ([heads], [batch, heads]):
        raise ValueError(
            f"alibi_slopes must be [heads] = [{heads}] or [batch, heads] = [{batch}, {heads}], "
            f"got {list(slopes.shape)}"
        )
    if slopes.device != device:
        raise ValueError(f"alibi_slopes is on {slopes.device}, q on {device}")
    if not slopes.is_cuda and not torch.compiler.is_compiling():
        if not torch.isfinite(slopes).all():
            raise ValueError("alibi_slopes must be finite")
    return slopes.contiguous()


def attention(q, k, v, layout) -> int:
    """Checks q, k, v and the layout; returns the GQA group size (q heads per k/v head)."""
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
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q, k, v must have the same shape (k, v may have fewer heads, q fewer positions), "
            f"got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    if k.shape[1] < 1 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"q heads ({q.shape[1]}) must be a multiple of k/v heads ({k.shape[1]}) (GQA / MQA)"
        )
    if k.shape[2] != layout.seq_len:
        raise ValueError(f"sequence length {k.shape[2]} differs from the layout's {layout.seq_len}")
    if q.shape[2] != layout.q_len:
        raise ValueError(
            f"q has {q.shape[2]} positions, the layout {layout.q_len} queries "
            f"(for {layout.seq_len} keys)"
        )
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
    return q.shape[1] // k.shape[1]


# ---- VQ -------------------------------------------------------------------------------------
def _int_scalar(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def codebook(cb, name: str = "codebook") -> torch.Tensor:
    cb = tensor(cb, name)
    float_dtype(cb, name)
    if cb.dim() != 2 or cb.shape[0] < 1 or cb.shape[1] < 1:
        raise ValueError(
            f"{name} must be a non-empty [num_codes, dim] tensor, got {list(cb.shape)}"
        )
    if cb.shape[0] >= 2**31:
        raise ValueError(f"{name} may hold at most 2^31 - 1 codes")
    unit_last_stride(cb, name)
    if cb.device.type == "cuda":
        cuda_built()
    return cb


def vq_quantize(x, cb) -> None:
    x = tensor(x, "x")
    cb = codebook(cb)
    float_dtype(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be [..., dim] with at least 2 dims, got {list(x.shape)}")
    if x.dtype != cb.dtype:
        raise TypeError(f"x and codebook must share a dtype, got {x.dtype} and {cb.dtype}")
    same_device({"x": x, "codebook": cb})
    if x.shape[-1] != cb.shape[1]:
        raise ValueError(f"x has dim {x.shape[-1]} but the codebook's codes have dim {cb.shape[1]}")
    unit_last_stride(x, "x")


def vq_indices(indices, name: str = "indices") -> torch.Tensor:
    """Integer tensor of code indices (any integer dtype; the kernels read int32 / int64)."""
    indices = tensor(indices, name)
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise TypeError(f"{name} must hold integers, got {indices.dtype}")
    return indices


def vq_embed(indices, cb) -> None:
    indices = vq_indices(indices)
    cb = codebook(cb)
    same_device({"indices": indices, "codebook": cb})


def vq_code_stats(indices, x, num_codes) -> int:
    indices = vq_indices(indices)
    x = tensor(x, "x")
    float_dtype(x, "x")
    num_codes = _int_scalar(num_codes, "num_codes")
    if not 1 <= num_codes < 2**31:
        raise ValueError(f"num_codes must be in 1 .. 2^31 - 1, got {num_codes}")
    if x.dim() < 1:
        raise ValueError("x must be [..., dim]")
    if tuple(indices.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"indices shape {list(indices.shape)} must equal x's leading shape {list(x.shape[:-1])}"
        )
    if indices.numel() >= 2**31:
        raise ValueError("vq_code_stats handles at most 2^31 - 1 rows")
    device = same_device({"indices": indices, "x": x})
    unit_last_stride(x, "x")
    if device.type == "cuda":
        cuda_built()
    return num_codes


# ---- decoding attention ---------------------------------------------------------------------
CUDA_DECODE_HEAD_DIMS = (32, 64, 128, 256)


def decode(q, k_cache, v_cache, layout, pos) -> int:
    from vilg.layouts import Layout

    q, k, v = tensor(q, "q"), tensor(k_cache, "k_cache"), tensor(v_cache, "v_cache")
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a vilg.layouts.Layout, got {type(layout)}")
    pos = _int_scalar(pos, "pos")
    for n, t in (("q", q), ("k_cache", k), ("v_cache", v)):
        float_dtype(t, n)
        unit_last_stride(t, n)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    device = same_device({"q": q, "k_cache": k, "v_cache": v})
    if q.dim() != 3:
        raise ValueError(f"q must be [batch, heads, head_dim], got {list(q.shape)}")
    for n, t in (("k_cache", k), ("v_cache", v)):
        if t.dim() != 4:
            raise ValueError(f"{n} must be [batch, heads, seq, head_dim], got {list(t.shape)}")
        B, H, _, D = t.shape
        if (B, H, D) != tuple(q.shape):
            raise ValueError(
                f"{n} shape {list(t.shape)} does not match q {list(q.shape)} "
                "([batch, heads, seq, head_dim] vs [batch, heads, head_dim])"
            )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k_cache and v_cache differ in length: {k.shape[2]} vs {v.shape[2]}")
    S, D = k.shape[2], q.shape[2]
    if not 0 <= pos < layout.seq_len:
        raise ValueError(f"pos {pos} outside the layout's sequence of length {layout.seq_len}")
    if pos >= S:
        raise ValueError(f"pos {pos} outside the cache of length {S}")
    if not 1 <= D <= 256:
        raise ValueError(f"head_dim must be in 1..256, got {D}")
    if device.type == "cuda":
        cuda_built()
        if D not in CUDA_DECODE_HEAD_DIMS:
            raise ValueError(
                f"CUDA decode_attention supports head_dim {CUDA_DECODE_HEAD_DIMS}, got {D}"
            )
        for n, t in (("q", q), ("k_cache", k), ("v_cache", v)):
            esize = t.element_size()
            if t.data_ptr() % 16 or any((s * esize) % 16 for s in t.stride()[:-1]):
                raise ValueError(
                    f"CUDA decode_attention reads {n} in 16-byte vectors: its base address and "
                    f"strides {t.stride()} must be multiples of 16 bytes; call .contiguous()"
                )
    return pos


def decode_keys(keys: torch.Tensor, cache_len: int, pos: int) -> None:
    if keys.numel() and int(keys[-1]) >= cache_len:
        raise ValueError(
            f"the layout lets position {pos} attend position {int(keys[-1])}, beyond the cache "
            f"of length {cache_len}"
        )


# ---- sampling -------------------------------------------------------------------------------
def sampling(logits, uncond, cfg_scale, temperature, top_k, top_p) -> tuple:
    import math

    logits = tensor(logits, "logits")
    float_dtype(logits, "logits")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [batch, vocab] with vocab >= 1, got {list(logits.shape)}")
    if logits.shape[1] > 2**23:
        raise ValueError(f"vocab size must be at most 2^23, got {logits.shape[1]}")
    unit_last_stride(logits, "logits")
    ts = {"logits": logits}
    if uncond is not None:
        uncond = tensor(uncond, "uncond")
        if uncond.dtype != logits.dtype:
            raise TypeError(f"uncond dtype {uncond.dtype} differs from logits {logits.dtype}")
        if uncond.shape != logits.shape:
            raise ValueError(
                f"uncond shape {list(uncond.shape)} differs from logits {list(logits.shape)}"
            )
        unit_last_stride(uncond, "uncond")
        ts["uncond"] = uncond
    device = same_device(ts)
    if device.type == "cuda":
        cuda_built()
    for name, val in (("cfg_scale", cfg_scale), ("temperature", temperature), ("top_p", top_p)):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(val).__name__}")
    cfg_scale, temperature, top_p = float(cfg_scale), float(temperature), float(top_p)
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
    if math.isnan(temperature) or temperature == math.inf:
        raise ValueError(f"temperature must be a finite number (0: argmax), got {temperature}")
    if temperature < 0:  # a sign slip, not a request for argmax: say so instead of guessing
        raise ValueError(f"temperature must be >= 0 (0: argmax), got {temperature}")
    if 0 < temperature < 1e-30:  # 1 / temperature must stay a finite float32
        raise ValueError(f"temperature {temperature} is too small; use 0 for argmax")
    top_k = _int_scalar(top_k, "top_k")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    # data-dependent: eager CPU raises ValueError naming the rows; CUDA (where reading the
    # logits back would sync every decoding step) and torch.compile assert on the device
    if not torch.compiler.is_compiling() and not logits.is_cuda:
        nan_rows(logits, uncond, cfg_scale)
    else:
        device_check(
            ~all_nan_rows(logits, uncond, cfg_scale).any(),
            "vilg: sample got a logits row that is all NaN (after classifier-free guidance, if "
            "any): there is no distribution to sample from",
        )
    return cfg_scale, temperature, top_k, top_p


def nan_rows(logits: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float) -> None:
    """A row whose (guidance-mixed) logits are all NaN has no distribution to draw from: the
    kernel would return an arbitrary token, so refuse it and name the rows."""
    bad = all_nan_rows(logits, uncond, cfg_scale)
    if bad.any():
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"logits rows [{shown}] are all NaN ({len(rows)} of {logits.shape[0]}"
            + (", after classifier-free guidance" if uncond is not None else "")
            + "): there is no distribution to sample from"
        )


def all_nan_rows(logits: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float):
    """bool [batch]: rows whose logits, mixed as the kernels mix them, are all NaN."""
    mixed = logits.float()
    if uncond is not None:
        u = uncond.float()
        mixed = u + cfg_scale * (mixed - u)
    return torch.isnan(mixed).all(dim=1)
