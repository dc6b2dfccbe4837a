"""vilg.nn: the attention modules against a float64 dense re-implementation, their layout
cache, and torch.compile(fullgraph=True) forward and backward."""

import pytest
import torch
from reference import rel_err
from torch._dynamo.testing import CompileCounterWithBackend

from vilg.layouts import neighborhood_2d, sliding_window
from vilg.nn import SparseAttention, SparseSelfAttention, padding_bounds


def _dense_self_attention(mod, x, mask, key_lens=None):
    """The same block in float64 with plain ops: separate q/k/v, repeated k/v, full mask."""
    H, G, D = mod.heads, mod.kv_heads, mod.head_dim
    w = mod.qkv.weight.double()
    xd = x.double()
    q = (xd @ w[: H * D].T).unflatten(-1, (H, D)).transpose(1, 2)
    k = (xd @ w[H * D : (H + G) * D].T).unflatten(-1, (G, D)).transpose(1, 2)
    v = (xd @ w[(H + G) * D :].T).unflatten(-1, (G, D)).transpose(1, 2)
    k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
    m = mask.expand(x.shape[0], *mask.shape).clone()
    if key_lens is not None:
        for b, n in enumerate(key_lens.tolist()):
            m[b, :, n:] = False
    s = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~m[:, None], float("-inf"))
    o = torch.softmax(s, -1).nan_to_num(0.0) @ v
    return o.transpose(1, 2).flatten(2) @ mod.out.weight.double().T


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_self_attention_matches_dense(gen, heads, kv_heads):
    torch.manual_seed(0)
    mod = SparseSelfAttention(
        32, heads, kv_heads, lambda n: sliding_window(n, 6, block_size=16), head_dim=8
    )
    x = torch.randn(3, 45, 32, generator=gen, requires_grad=True)
    lens = torch.tensor([45, 20, 7])
    out = mod(x, key_lens=lens)
    ref = _dense_self_attention(mod, x, mod.attn.layout(45).dense_mask(), lens)
    assert out.shape == x.shape and rel_err(out, ref) < 1e-5
    g = torch.randn(out.shape, generator=gen)
    params = (x, mod.qkv.weight, mod.out.weight)
    for a, b in zip(
        torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g.double())
    ):
        assert rel_err(a, b) < 2e-5


def test_sparse_attention_module_and_prefix_padding(gen):
    mod = SparseAttention(neighborhood_2d((5, 6), 3, prefix=2, block_size=16))
    L = 32
    q = torch.randn(2, 4, L, 8, generator=gen)
    k, v = (torch.randn(2, 2, L, 8, generator=gen) for _ in "kv")
    lens = torch.tensor([2, 1])  # the second sample pads its second global token
    out = mod(q, k, v, text_lens=lens)
    mask = mod.layout(L).dense_mask().expand(2, L, L).clone()
    mask[1, :, 1] = False
    kr, vr = (t.double().repeat_interleave(2, 1) for t in (k, v))
    s = (q.double() @ kr.transpose(-1, -2) / 8**0.5).masked_fill(~mask[:, None], float("-inf"))
    assert rel_err(out, torch.softmax(s, -1) @ vr) < 1e-5
    with pytest.raises(ValueError, match="differs from the layout"):
        mod(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1])


def test_layout_cache_builds_once_per_length_and_evicts():
    calls = []

    def layout_fn(n):
        calls.append(n)
        return sliding_window(n, 4, block_size=16)

    mod = SparseAttention(layout_fn, cache_size=2)
    for n in (20, 20, 30, 20, 40, 30):
        q = torch.randn(1, 1, n, 8)
        mod(q, q, q)
    assert calls == [20, 30, 40, 30]  # LRU: reusing 20 made 30 the one 40 evicts
    with pytest.raises(ValueError, match="must return a Layout of length 9"):
        SparseAttention(lambda n: sliding_window(n + 1, 4)).layout(9)
    with pytest.raises(TypeError):
        SparseAttention(3)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        SparseSelfAttention(32, 4, 3, lambda n: sliding_window(n, 4))


def test_compile_fullgraph_module_no_recompile_on_batch(gen):
    torch.manual_seed(1)
    mod = SparseSelfAttention(32, 4, 2, lambda n: sliding_window(n, 8, block_size=16))
    mod.prepare(40)
    cc = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(mod, backend=cc, fullgraph=True)
    for B in (2, 3, 5):
        x = torch.randn(B, 40, 32, generator=gen, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 0)
        out = compiled(x)
        gx, gw = torch.autograd.grad(out.square().sum(), (x, mod.qkv.weight))
        want = mod(x)
        wx, ww = torch.autograd.grad(want.square().sum(), (x, mod.qkv.weight))
        assert rel_err(out, want) < 1e-6 and rel_err(gx, wx) < 1e-6 and rel_err(gw, ww) < 1e-6
    assert cc.frame_count == 1


def test_compile_without_a_built_layout_says_what_to_do():
    mod = SparseSelfAttention(16, 2, 1, lambda n: sliding_window(n, 4, block_size=16))
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="prepare"):
        compiled(torch.randn(1, 24, 16))


# ---- padding masks, left padding, score modifiers ---------------------------------------------


def _mask_ref(q, k, v, allowed, softcap=0.0, slopes=None):
    """float64 dense attention: q [B, H, L, D], k, v [B, G, L, D], allowed [B, L, L] bool."""
    q, k, v = (t.double() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        i = torch.arange(q.shape[2])
        s = s - slopes.double()[:, None, None] * (i[:, None] - i[None, :]).abs()
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def _qkv(gen, L=50):
    return [torch.randn(3, h, L, 8, generator=gen, requires_grad=True) for h in (4, 2, 2)]


def test_padding_mask_right_and_errors(gen):
    mod = SparseAttention(lambda n: sliding_window(n, 9, block_size=16))
    q, k, v = _qkv(gen)
    am = torch.ones(3, 50, dtype=torch.long)
    am[1, 31:], am[2, 5:] = 0, 0
    out = mod(q, k, v, attention_mask=am)
    assert torch.equal(out, mod(q, k, v, key_lens=torch.tensor([50, 31, 5])))
    allowed = mod.layout(50).dense_mask()[None] & am.bool()[:, None, :]
    assert rel_err(out, _mask_ref(q, k, v, allowed)) < 1e-5
    gappy = am.clone()
    gappy[0, 10] = 0
    with pytest.raises(ValueError, match="contiguous run"):
        mod(q, k, v, attention_mask=gappy)
    with pytest.raises(ValueError, match="2-D"):
        mod(q, k, v, attention_mask=am[:, None, None, :])
    with pytest.raises(ValueError, match="not both"):
        mod(q, k, v, attention_mask=am, key_lens=torch.tensor([50, 31, 5]))


def test_padding_bounds():
    am = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    starts, lens = padding_bounds(am, 4, 4)
    assert starts.tolist() == [0, 2, 1, 0] and lens.tolist() == [3, 4, 3, 0]
    starts, lens = padding_bounds(am[[0, 3]], 2, 4)
    assert starts is None and lens.tolist() == [3, 0]


def test_left_padding_softcap_alibi(gen):
    slopes = torch.tensor([0.4, 0.2, 0.1, 0.05])
    mod = SparseAttention(lambda n: sliding_window(n, 9, block_size=16), softcap=3.0,
                          alibi_slopes=slopes)  # fmt: skip
    q, k, v = _qkv(gen)
    am = torch.ones(3, 50, dtype=torch.long)
    am[0, :20], am[1, 40:], am[2, :3], am[2, 45:] = 0, 0, 0, 0
    out = mod(q, k, v, attention_mask=am)
    allowed = mod.layout(50).dense_mask()[None] & am.bool()[:, None, :]
    want = _mask_ref(q, k, v, allowed, softcap=3.0, slopes=slopes)
    assert rel_err(out, want) < 1e-5
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), g)
    exp = torch.autograd.grad(want, (q, k, v), g.double())
    assert all(rel_err(a, b) < 1e-4 for a, b in zip(got, exp))
