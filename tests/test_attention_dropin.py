"""sparse_attention as a drop-in: GQA / MQA, per-sample key padding, torch.compile(fullgraph)."""

import pytest
import torch
from reference import attention as ref_attention
from reference import rel_err
from torch._dynamo.testing import CompileCounterWithBackend

from vilg.layouts import Layout, axial, ernie_vilg, neighborhood_2d
from vilg.ops import sparse_attention


def _repeat_kv(t, g):
    """Independent GQA reference: materialise each k/v head g times (q head h -> h // g)."""
    return t.repeat_interleave(g, dim=1)


def _check_grads(out, ref, leaves, ref_leaves, tol=1e-5):
    assert rel_err(out, ref) < tol
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, ref_leaves, g.double())
    for name, a, b in zip("qkv", got, want):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < 2 * tol, (name, rel_err(a, b))


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 1), (6, 3), (8, 2), (3, 3)])
@pytest.mark.parametrize("kind", ["row", "column"])
def test_gqa_matches_repeated_kv(gen, heads, kv_heads, kind):
    lay = ernie_vilg(kind, 5, (5, 6), window=3, block_size=16)
    B, L, D = 2, lay.seq_len, 16
    q = torch.randn(B, heads, L, D, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, kv_heads, L, D, generator=gen, requires_grad=True) for _ in range(2))
    lens = torch.tensor([5, 2])
    out = sparse_attention(q, k, v, lay, text_lens=lens)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    g = heads // kv_heads
    ref = ref_attention(
        qd,
        _repeat_kv(kd, g),
        _repeat_kv(vd, g),
        lay.dense_mask(),
        text_lens=lens,
        text_segment=lay.text_segment,
    )
    _check_grads(out, ref, (q, k, v), (qd, kd, vd))


def test_gqa_lse_and_strided_projection(gen):
    # [B, L, H, D] projections viewed as [B, H, L, D], 4 q heads over 2 kv heads
    lay = Layout.from_mask_mod(lambda q, k: k <= q, 37, block_size=16)
    x = torch.randn(2, 37, 4 + 2 + 2, 16, generator=gen)
    q, k, v = x[:, :, :4].transpose(1, 2), x[:, :, 4:6].transpose(1, 2), x[:, :, 6:].transpose(1, 2)
    out, lse = sparse_attention(q, k, v, lay, return_lse=True)
    kr = _repeat_kv(k.double(), 2)
    s = (q.double() @ kr.transpose(-1, -2) / 4).masked_fill(~lay.dense_mask(), float("-inf"))
    assert rel_err(lse, torch.logsumexp(s, -1)) < 1e-6
    assert rel_err(out, ref_attention(q, kr, _repeat_kv(v, 2), lay.dense_mask())) < 1e-5


@pytest.mark.parametrize("L", [33, 50])
def test_key_lens_pad_any_layout(gen, L):
    band = Layout.from_mask_mod(lambda q, k: (q - k).abs() <= 7, L, block_size=16)
    B = 3
    q, k, v = (torch.randn(B, 2, L, 16, generator=gen, requires_grad=True) for _ in range(3))
    lens = torch.tensor([L, 9, 20])
    out = sparse_attention(q, k, v, band, key_lens=lens)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    mask = band.dense_mask()
    # independent construction: one boolean [B, L, L] mask with padded keys removed
    m = mask.expand(B, L, L).clone()
    for b, n in enumerate(lens.tolist()):
        m[b, :, n:] = False
    ref = (
        torch.softmax(
            (qd @ kd.transpose(-1, -2) / 4).masked_fill(~m[:, None], float("-inf")), -1
        ).nan_to_num(0.0)
        @ vd
    )
    _check_grads(out, ref, (q, k, v), (qd, kd, vd))


def test_key_lens_errors(gen):
    lay = ernie_vilg("row", 4, (4, 4), block_size=16)
    q = torch.randn(2, 2, lay.seq_len, 16, generator=gen)
    with pytest.raises(ValueError, match="not both"):
        sparse_attention(
            q, q, q, lay, text_lens=torch.tensor([1, 2]), key_lens=torch.tensor([3, 4])
        )
    with pytest.raises(ValueError, match=r"key_lens values must lie in \[0, 20\]"):
        sparse_attention(q, q, q, lay, key_lens=torch.tensor([21, 4]))
    with pytest.raises(TypeError, match="key_lens must hold integers"):
        sparse_attention(q, q, q, lay, key_lens=torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        sparse_attention(torch.randn(2, 3, lay.seq_len, 16), q, q, lay)
    with pytest.raises(ValueError, match="same shape"):
        sparse_attention(q, q, q[:, :1], lay)


def test_compile_fullgraph_text_lens_no_recompile_on_batch(gen):
    """The model's call (text_lens, GQA) compiles without graph breaks, forward and backward,
    and a batch-size change reuses the graph (dynamic batch)."""
    lay = ernie_vilg("row", 4, (4, 5), block_size=16)
    cc = CompileCounterWithBackend("aot_eager")

    def f(q, k, v, lens):
        return sparse_attention(q, k, v, lay, text_lens=lens)

    fn = torch.compile(f, backend=cc, fullgraph=True)
    for B in (2, 3, 5):
        q = torch.randn(B, 4, lay.seq_len, 16, generator=gen, requires_grad=True)
        k, v = (torch.randn(B, 2, lay.seq_len, 16, generator=gen, requires_grad=True) for _ in "kv")
        lens = torch.randint(0, 5, (B,), generator=gen)
        for t in (q, k, v, lens):  # batch dynamic from the first call (heads stay static)
            torch._dynamo.mark_dynamic(t, 0)
        out = fn(q, k, v, lens)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        want = f(q, k, v, lens)
        want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
        assert rel_err(out, want) < 1e-6
        for a, b in zip(grads, want_grads):
            assert rel_err(a, b) < 1e-6
    assert cc.frame_count == 1


def test_compile_default_recompiles_once_then_reuses(gen):
    # default dynamic=None: dynamo's one automatic-dynamic recompile, then none for new batches
    lay = Layout.from_mask_mod(lambda q, k: k <= q, 40, block_size=16)
    cc = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(
        lambda q, k, v, n: sparse_attention(q, k, v, lay, key_lens=n).sum(),
        backend=cc,
        fullgraph=True,
    )
    for B in (1, 2, 3, 4):
        q, k, v = (torch.randn(B, 2, 40, 8, generator=gen, requires_grad=True) for _ in "qkv")
        fn(q, k, v, torch.full((B,), 30)).backward()
        assert torch.isfinite(q.grad).all()
    assert cc.frame_count == 2


def test_vilg_model_with_text_lens_compiles_fullgraph(gen):
    # the failing case: the model's text_lens check broke the graph
    from vilg.app.model.transformer import GPTConfig, UnifiedTransformer

    torch.manual_seed(0)
    model = UnifiedTransformer(GPTConfig(text_len=8, grid=(4, 4), n_layer=2, n_head=2, n_embd=32))
    ti = torch.randint(0, 200, (2, 8), generator=gen)
    ii = torch.randint(0, 128, (2, 16), generator=gen)
    lens = torch.tensor([8, 3])
    want = model("text2image", ti, ii, lens)  # eager first: builds the layer layouts
    cc = CompileCounterWithBackend("aot_eager")
    out = torch.compile(model, backend=cc, fullgraph=True)("text2image", ti, ii, lens)
    assert rel_err(out, want) < 1e-6 and cc.frame_count == 1
    g = torch.autograd.grad(out.sum(), model.blocks[0].attn.qkv.weight)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_eager_call_does_not_import_dynamo():
    """The first call of a fresh process stays on the eager path: torch.library custom ops
    import torch._dynamo (seconds) on their first call, the eager autograd.Function does not.
    Forward and backward, GQA, in a subprocess (a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from vilg.layouts import causal\n"
        "from vilg.ops import sparse_attention\n"
        "q = torch.randn(1, 4, 70, 16, requires_grad=True)\n"
        "k, v = (torch.randn(1, 2, 70, 16, requires_grad=True) for _ in 'kv')\n"
        "sparse_attention(q, k, v, causal(70)).sum().backward()\n"
        "assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0\n"
        "print('dynamo imported:', 'torch._dynamo' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dynamo imported: False" in r.stdout


def test_eager_path_equals_custom_op(gen):
    """The eager autograd.Function and the custom op (what torch.compile and dispatch modes
    see) run the same kernels: identical outputs and gradients."""
    from vilg.ops import attention as att

    lay = ernie_vilg("conv", 6, (5, 7), window=3, block_size=16)
    q = torch.randn(2, 4, lay.seq_len, 16, generator=gen, requires_grad=True)
    k, v = (torch.randn(2, 2, lay.seq_len, 16, generator=gen, requires_grad=True) for _ in "kv")
    lens = torch.tensor([6, 2], dtype=torch.int32)
    *arrays, perm = lay.kernel_arrays("cpu")
    slopes = torch.rand(4, generator=gen)  # with the score modifiers on, both paths alike
    args = (list(arrays), perm, None, lens, 16, *lay.kernel_text_segment, 0.3, 1.5, slopes)
    g = torch.randn(q.shape, generator=gen)
    outs = []
    for fn in (att._EagerAttention.apply, att._fwd):
        o, lse = fn(q, k, v, *args)
        outs.append((o, lse, *torch.autograd.grad(o, (q, k, v), g)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert att._plain_eager(q, k, v)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # a dispatch mode is active: the custom op (it has a fake kernel)
        assert not att._plain_eager(q, k, v)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ernie_vilg("column", 5, (6, 7), block_size=16),
        lambda: axial((8, 10), "column", causal=True, prefix=3, block_size=16),
        lambda: neighborhood_2d((8, 16), 3, prefix=1, block_size=16),  # patch order
        lambda: neighborhood_2d((6, 9), 3, causal=True, prefix=2, block_size=16),
    ],
)
def test_key_lens_on_permuted_layouts(gen, make):
    """key_lens pads sequence positions, so a permuted layout runs as its sequence-order twin;
    forward and gradients against float64 dense attention, GQA."""
    lay = make()
    assert lay.kernel_perm is not None
    twin = lay.sequence_order()
    assert twin.kernel_perm is None and twin is lay.sequence_order()
    assert torch.equal(twin.dense_mask(), lay.dense_mask())
    L, B = lay.seq_len, 3
    q = torch.randn(B, 4, L, 16, generator=gen, requires_grad=True)
    k, v = (torch.randn(B, 2, L, 16, generator=gen, requires_grad=True) for _ in "kv")
    lens = torch.tensor([L, L // 2 + 1, 3])
    out = sparse_attention(q, k, v, lay, key_lens=lens)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    m = lay.dense_mask().expand(B, L, L).clone()
    for b, n in enumerate(lens.tolist()):
        m[b, :, n:] = False
    kr, vr = _repeat_kv(kd, 2), _repeat_kv(vd, 2)
    s = (qd @ kr.transpose(-1, -2) / 4).masked_fill(~m[:, None], float("-inf"))
    ref = torch.softmax(s, -1).nan_to_num(0.0) @ vr
    _check_grads(out, ref, (q, k, v), (qd, kd, vd))


def test_key_lens_permuted_under_compile(gen):
    lay = axial((8, 8), "column", block_size=16)
    q = torch.randn(2, 2, 64, 16, generator=gen)
    lens = torch.tensor([64, 30])
    fn = torch.compile(
        lambda q, lens: sparse_attention(q, q, q, lay, key_lens=lens),
        backend="aot_eager",
        fullgraph=True,
    )
    with pytest.raises(Exception, match=r"sequence_order\(\)"):
        fn(q, lens)
    lay.sequence_order()  # built before compiling: then it traces
    torch._dynamo.reset()
    assert rel_err(fn(q, lens), sparse_attention(q, q, q, lay, key_lens=lens)) < 1e-6
