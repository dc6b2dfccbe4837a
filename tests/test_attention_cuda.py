"""CUDA block-sparse attention against a float64 dense reference.

Every test marked `cuda` needs a GPU and a build of vilg with CUDA kernels, and is skipped
otherwise. The kernels are called directly (vilg._C) with outputs poisoned with NaN, so an
element a kernel forgets to write fails the comparison; a few tests go through the public op
(autograd) as well. `test_reference_plumbing_on_cpu` runs the same checks against the CPU
kernels, so that this file's reference and plumbing are exercised on machines without a GPU.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from vilg.layouts import DIRECTIONS, KINDS, Layout, ernie_vilg
from vilg.ops import _validate, sparse_attention
from vilg.ops._buffers import ref, stream_of


def _cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from vilg._ext import C

        return bool(C().build_info()["cuda"])
    except Exception:  # pragma: no cover - broken build: the CPU tests report it
        return False


cuda = pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA GPU and vilg built with CUDA")

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (32, 64, 128)
# max |x - ref| / max |ref| per tensor
TOL = {torch.float16: 3e-3, torch.bfloat16: 1e-2, torch.float32: 1e-4}
LSE_ATOL = {torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float32: 1e-4}
# (text length, image grid): L = 216 (last tile partial) and L = 320 (whole tiles)
GRIDS = {"odd": (21, (13, 15)), "even": (64, (16, 16))}
ANSWER = {"odd": 11, "even": 64}  # vqa's answer segment (keeps "even" in whole tiles)
BATCH, HEADS = 3, 2


def make_layout(kind: str, direction: str, parity: str) -> Layout:
    text, grid = GRIDS[parity]
    answer = ANSWER[parity] if direction == "vqa" else 0
    return ernie_vilg(kind, text, grid, direction=direction, window=7, answer_len=answer)


def text_lens(layout: Layout, padded: bool, device) -> torch.Tensor | None:
    """Sample 0: every text token padded (text-only queries of text2image get no key at all),
    sample 1: partly padded, sample 2: none."""
    if not padded:
        return None
    t = layout.text_segment[1]
    lens = torch.tensor([0, t // 3 + 1, t][:BATCH], dtype=torch.int32)
    return _validate.text_lens(lens, BATCH, layout.kernel_text_segment[1], torch.device(device))


def random_inputs(shape, dtype, device, seed: int, layout_kind: str = "contiguous"):
    """q, k, v, grad_out of `shape` [B, H, L, D]: contiguous, a transposed [B, L, H, D] view, or
    a slice of wider rows at an odd offset (not 16-byte aligned)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, L, D = shape
    out = []
    for _ in range(4):
        x = torch.randn(shape, generator=g)
        if layout_kind == "transposed":
            x = x.transpose(1, 2).contiguous().to(device, dtype).transpose(1, 2)
        elif layout_kind == "misaligned":
            wide = torch.zeros(B, H, L, D + 3)
            wide[..., 1 : D + 1] = x
            x = wide.to(device, dtype)[..., 1 : D + 1]
        else:
            x = x.to(device, dtype)
        out.append(x)
    return out


def reference(q, k, v, layout: Layout, scale: float, lens):
    """Dense attention in float64 under layout.dense_mask() with padded text keys masked per
    sample: (o, lse). Rows with no allowed key give o = 0, lse = -inf, and zero gradients."""
    q, k, v = (t.double() for t in (q, k, v))
    B, L = q.shape[0], layout.seq_len
    m = layout.dense_mask(q.device).expand(B, L, L).clone()
    if lens is not None:
        start, length = layout.text_segment
        pos = torch.arange(L, device=q.device)
        for b in range(B):
            m[b][:, (pos >= start + int(lens[b])) & (pos < start + length)] = False
    m = m[:, None]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    s = s.masked_fill(~m, float("-inf"))
    empty = ~m.any(-1)
    s = torch.where(empty[..., None], torch.zeros_like(s), s)
    p = torch.softmax(s, -1) * (~empty[..., None])
    lse = torch.logsumexp(s, -1).masked_fill(empty, float("-inf"))
    return p @ v, lse


def reference_grads(q, k, v, go, layout, scale, lens):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    o, _ = reference(*leaves, layout, scale, lens)
    o.backward(go.double())
    return [t.grad for t in leaves]


def _layout_args(layout: Layout, device):
    from vilg.ops.attention import _layout_refs

    *arrays, perm = layout.kernel_arrays(device)
    start, length = layout.kernel_text_segment
    return _layout_refs(arrays, perm), layout.seq_len, layout.block_size, start, length


def _lens_args(layout: Layout):  # query rows, key rows
    return layout.q_len, layout.seq_len


def run_fwd(q, k, v, layout, scale, lens):
    """The forward kernel on NaN-poisoned outputs."""
    from vilg._ext import C

    B, H, L, _ = q.shape
    o = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, L), float("nan"), dtype=torch.float32, device=q.device)
    arrays, L, block, start, length = _layout_args(layout, q.device)
    C().attention_fwd(
        ref(q),
        ref(k),
        ref(v),
        ref(o),
        ref(lse),
        arrays,
        *_lens_args(layout),
        block,
        start,
        length,
        None,  # keep_lo: no left padding
        ref(lens),
        scale,
        0.0,  # softcap
        None,  # alibi slopes
        stream_of(q),
    )
    return o, lse


def run_bwd(go, q, k, v, o, lse, layout, scale, lens):
    """The backward kernels on NaN-poisoned outputs and workspace."""
    from vilg._ext import C

    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
    delta = torch.full_like(lse, float("nan"))
    arrays, L, block, start, length = _layout_args(layout, q.device)
    C().attention_bwd(
        ref(go),
        ref(q),
        ref(k),
        ref(v),
        ref(o),
        ref(lse),
        ref(dq),
        ref(dk),
        ref(dv),
        ref(delta),
        arrays,
        *_lens_args(layout),
        block,
        start,
        length,
        None,  # keep_lo: no left padding
        ref(lens),
        scale,
        0.0,  # softcap
        None,  # alibi slopes
        stream_of(q),
    )
    return dq, dk, dv


def rel_err(x: torch.Tensor, expect: torch.Tensor) -> float:
    assert torch.isfinite(x).all(), f"{(~torch.isfinite(x)).sum().item()} non-finite elements"
    return ((x.double() - expect).abs().max() / expect.abs().max().clamp_min(1e-30)).item()


def check_lse(lse: torch.Tensor, expect: torch.Tensor, atol: float) -> None:
    assert not torch.isnan(lse).any(), "lse not written everywhere"
    empty = torch.isinf(expect)
    assert torch.equal(torch.isinf(lse), empty), "rows with no allowed key differ"
    assert (lse[empty] < 0).all()
    if (~empty).any():
        assert (lse[~empty].double() - expect[~empty]).abs().max().item() <= atol


def check_case(
    device, layout, dtype, head_dim, lens, seed, *, storage="contiguous", scale=None, grads=True
):
    """Forward (o, lse) and, with grads, backward of the kernels against the reference."""
    shape = (BATCH, HEADS, layout.seq_len, head_dim)
    q, k, v, go = random_inputs(shape, dtype, device, seed, storage)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    tol = TOL[dtype]
    o, lse = run_fwd(q, k, v, layout, scale, lens)
    o_ref, lse_ref = reference(q, k, v, layout, scale, lens)
    assert rel_err(o, o_ref) <= tol, "forward output"
    check_lse(lse, lse_ref, LSE_ATOL[dtype])
    if not grads:
        return
    got = run_bwd(go, q, k, v, o, lse, layout, scale, lens)
    want = reference_grads(q, k, v, go, layout, scale, lens)
    for name, x, y in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert rel_err(x, y) <= tol, name


# ---- the full matrix -----------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["full_text", "padded_text"])
@pytest.mark.parametrize("parity", ["odd", "even"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dense_reference(kind, direction, parity, padded, dtype, head_dim):
    layout = make_layout(kind, direction, parity)
    seed = zlib.crc32(f"{kind}-{direction}-{parity}-{padded}-{dtype}-{head_dim}".encode())
    check_case("cuda", layout, dtype, head_dim, text_lens(layout, padded, "cuda"), seed)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("storage", ["transposed", "misaligned"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_inputs(storage, dtype, head_dim):
    """[B, L, H, D] views (16-byte aligned rows: cp.async path) and odd-offset slices of wider
    rows (element-wise path); outputs get the inputs' strides where torch keeps them."""
    layout = make_layout("column", "text2image", "odd")
    check_case("cuda", layout, dtype, head_dim, text_lens(layout, True, "cuda"), 7, storage=storage)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("scale", [0.5, -0.3, 0.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_scale(scale, dtype):
    layout = make_layout("conv", "image2text", "odd")
    check_case("cuda", layout, dtype, 64, text_lens(layout, True, "cuda"), 11, scale=scale)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_tiles(dtype):
    """A query tile with no allowed key at all and a key tile no query attends: the kernels'
    empty CSR / CSC lists must still write zeros (and lse = -inf)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(200, 200, generator=g) < 0.4
    mask[:64, :] = False
    mask[:, 64:128] = False
    layout = Layout.from_dense(mask)
    check_case("cuda", layout, dtype, 64, None, 5)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_backward_deterministic(dtype, head_dim):
    layout = make_layout("row", "text2image", "odd")
    lens = text_lens(layout, True, "cuda")
    q, k, v, go = random_inputs((BATCH, HEADS, layout.seq_len, head_dim), dtype, "cuda", 1)
    scale = head_dim**-0.5
    o, lse = run_fwd(q, k, v, layout, scale, lens)
    first = run_bwd(go, q, k, v, o, lse, layout, scale, lens)
    for _ in range(2):
        again = run_bwd(go, q, k, v, o, lse, layout, scale, lens)
        for x, y in zip(first, again, strict=True):
            assert torch.equal(x, y)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_op_autograd(dtype):
    """sparse_attention (custom op + autograd) on CUDA, non-contiguous inputs."""
    layout = make_layout("conv", "text2image", "odd")
    lens = torch.tensor([0, 5, 21], dtype=torch.int32)
    q, k, v, go = random_inputs((BATCH, HEADS, layout.seq_len, 64), dtype, "cuda", 2, "transposed")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    o, lse = sparse_attention(*leaves, layout, text_lens=lens.cuda(), return_lse=True)
    o.backward(go)
    o_ref, lse_ref = reference(q, k, v, layout, 64**-0.5, lens)
    assert rel_err(o.detach(), o_ref) <= TOL[dtype]
    check_lse(lse, lse_ref, LSE_ATOL[dtype])
    want = reference_grads(q, k, v, go, layout, 64**-0.5, lens)
    for x, y in zip(leaves, want, strict=True):
        assert rel_err(x.grad, y) <= TOL[dtype]


@pytest.mark.cuda
@cuda
def test_cuda_constraints():
    dense = torch.ones(100, 100, dtype=torch.bool)
    q = torch.randn(1, 1, 100, 48, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="head_dim"):
        sparse_attention(q, q, q, Layout.from_dense(dense))
    q = torch.randn(1, 1, 100, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="block_size"):
        sparse_attention(q, q, q, Layout.from_dense(dense, block_size=32))


# ---- the plumbing above, on the CPU kernels ------------------------------------------------------


@pytest.mark.parametrize(
    "kind, direction, parity, dtype, head_dim, storage",
    [
        ("conv", "text2image", "odd", torch.float32, 32, "misaligned"),
        ("column", "image2text", "even", torch.bfloat16, 64, "transposed"),
    ],
)
def test_reference_plumbing_on_cpu(kind, direction, parity, dtype, head_dim, storage):
    layout = make_layout(kind, direction, parity)
    check_case("cpu", layout, dtype, head_dim, text_lens(layout, True, "cpu"), 0, storage=storage)
