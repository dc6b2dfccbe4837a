"""Fused token sampler: classifier-free guidance, temperature, top-k, top-p and a
counter-based (Philox4x32-10) categorical draw, one row of logits per sample.

The algorithm (identical on CPU and CUDA, see csrc/cpu/sampling.h), for each row b:

1. l = uncond + cfg_scale * (logits - uncond) if `uncond` is given, else logits (float32).
2. temperature == 0: return argmax l (lowest index on ties). Else z = l * (1 / temperature).
3. top_k > 0: keep the entries with z >= the k-th largest z (ties at the cut are all kept).
4. Weights w = floor(exp(z - max z) * 2^40) (integers, so every sum is exact).
5. top_p < 1: keep the entries with z >= tau, tau the largest kept value whose kept entries at
   or above it hold at least top_p of the kept weight (the smallest most-probable set).
6. u = 53 bits of Philox4x32-10(key = seed, counter = (offset, b)); the token is the first
   kept index (in index order) where the running sum of w exceeds u * (kept weight).

Equal (seed, offset) give equal tokens; advance `offset` every step. NaN logits count as -inf;
a row that is all -inf is drawn uniformly, a row that is all NaN (after guidance) raises
ValueError naming it on the CPU; on a GPU (where reading the logits back would sync every step
and forbid graph capture) it fails a device-side assertion instead, so the next synchronising
CUDA call raises. temperature < 0 raises. Tokens whose weight rounds to 0
(probability below ~2^-40 of the most likely one) are never drawn.
"""

from __future__ import annotations

import torch

from vilg._ext import C
from vilg.ops import _validate
from vilg.ops._arrays import accepts_arrays
from vilg.ops._buffers import profiled, ref, stream_of

_U64 = 1 << 64


def _as_i64(v: int) -> int:
    v %= _U64
    return v - _U64 if v >= 1 << 63 else v


# The schema is written out: torch before 2.7 cannot infer it from string annotations
# (tests/test_torch_compat.py checks it against the inferred one).
@torch.library.custom_op(
    "vilg::sample",
    mutates_args=(),
    schema=(
        "(Tensor logits, Tensor? uncond, float cfg_scale, float temperature, "
        "SymInt top_k, float top_p, SymInt seed, SymInt offset) -> Tensor"
    ),
)
def _sample(
    logits: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    offset: int,
) -> torch.Tensor:
    return _run(logits, uncond, cfg_scale, temperature, top_k, top_p, seed, offset)


def _run(logits, uncond, cfg_scale, temperature, top_k, top_p, seed, offset) -> torch.Tensor:
    out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    C().sample(
        ref(logits),
        ref(uncond),
        ref(out),
        cfg_scale,
        temperature,
        top_k,
        top_p,
        seed % _U64,
        offset % _U64,
        stream_of(logits),
    )
    return out


@_sample.register_fake
def _(logits, uncond, cfg_scale, temperature, top_k, top_p, seed, offset):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)


@accepts_arrays
def sample(
    logits: torch.Tensor,
    *,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """One token per row of `logits` [batch, vocab] (float32 / float16 / bfloat16, last dim
    contiguous) -> int64 [batch]. See the module docstring for the exact algorithm. `seed` and
    `offset` are taken modulo 2^64. Not differentiable."""
    cfg_scale, temperature, top_k, top_p = _validate.sampling(
        logits, uncond, cfg_scale, temperature, top_k, top_p
    )
    seed = _validate._int_scalar(seed, "seed")
    offset = _validate._int_scalar(offset, "offset")
    # eager: straight to the kernel (the op's dispatch costs more than sampling a decode step)
    args = (logits, uncond, cfg_scale, temperature, top_k, top_p, _as_i64(seed), _as_i64(offset))
    if torch.compiler.is_compiling():
        return _sample(*args)
    with profiled("vilg::sample"):
        return _run(*args)
