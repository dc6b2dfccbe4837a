"""vilg.nn: the attention modules against a float64 dense re-implementation, their layout
cache, and torch.compile(fullgraph=True) forward and backward."""

import pytest
import torch
from reference import rel_err
from torch._dynamo.testing import CompileCounterWithBackend

from vilg.layouts import neighborhood_2d, sliding_window
from vilg.nn import SparseAttention, SparseSelfAttention


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
