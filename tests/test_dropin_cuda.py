"""The drop-in features on CUDA (GQA / MQA, key_lens padding, the pattern library, vilg.nn,
torch.compile, chunks of queries against a longer KV cache) against a float64 dense reference;
skipped without a GPU. GQA (q head h reads k/v head h // group, dK / dV summed over the group
in the dK/dV kernel) and rectangular layouts are native in the kernels; the CPU twins of these
checks are in test_attention_dropin.py / test_attention_chunk.py / test_patterns.py, and the
emulation (test_cuda_emulation.py) runs the CUDA source on the CPU. `test_plumbing_on_cpu`
runs this file's helpers on the CPU so they are exercised everywhere."""

import pytest
import torch
from reference import rel_err

from vilg.layouts import axial, causal, neighborhood_2d, sliding_window
from vilg.nn import SparseSelfAttention
from vilg.ops import sparse_attention

TOL = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-4}


def _reference(q, k, v, mask, key_lens=None):
    """float64 dense attention with k/v repeated per group and padded keys removed."""
    g = q.shape[1] // k.shape[1]
    q, k, v = (t.double() for t in (q, k, v))
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    m = mask.to(q.device).expand(q.shape[0], *mask.shape).clone()
    if key_lens is not None:
        for b, n in enumerate(key_lens.tolist()):
            m[b, :, n:] = False
    s = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~m[:, None], float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def _check(lay, dtype, device, heads=4, kv_heads=2, key_lens=None, D=64):
    gen = torch.Generator(device="cpu").manual_seed(11)
    L = lay.seq_len
    q = torch.randn(2, heads, lay.q_len, D, generator=gen).to(device, dtype).requires_grad_()
    k, v = (
        torch.randn(2, kv_heads, L, D, generator=gen).to(device, dtype).requires_grad_()
        for _ in "kv"
    )
    lens = None if key_lens is None else key_lens.to(device)
    out = sparse_attention(q, k, v, lay, key_lens=lens)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*leaves, lay.dense_mask(), key_lens)
    assert rel_err(out, ref) < TOL[dtype]
    g = torch.randn(out.shape, generator=gen).to(device)
    got = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    want = torch.autograd.grad(ref, leaves, g.double())
    for a, b in zip(got, want):
        assert rel_err(a, b) < 2 * TOL[dtype]


LAYOUTS = [
    lambda: causal(200),
    lambda: sliding_window(300, 64),
    lambda: neighborhood_2d((16, 16), 5, prefix=1),
    lambda: axial((12, 20), "column", True, prefix=8),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (6, 3)])
@pytest.mark.parametrize("make", LAYOUTS)
def test_patterns_gqa_on_cuda(make, heads, kv_heads, dtype):
    _check(make(), dtype, "cuda", heads, kv_heads)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_key_lens_on_cuda(dtype):
    _check(sliding_window(300, 64), dtype, "cuda", key_lens=torch.tensor([300, 77]))
    # permuted layouts run as their sequence-order twins
    _check(LAYOUTS[3](), dtype, "cuda", key_lens=torch.tensor([248, 100]))
    _check(LAYOUTS[2](), dtype, "cuda", key_lens=torch.tensor([257, 31]))


CHUNKS = [
    lambda: causal(333).last_queries(100),
    lambda: sliding_window(300, 64).last_queries(129),
    lambda: causal(130, prefix=5).last_queries(1),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 3)])
@pytest.mark.parametrize("make", CHUNKS)
def test_chunked_queries_on_cuda(make, heads, kv_heads, dtype):
    lay = make()
    _check(lay, dtype, "cuda", heads, kv_heads)
    _check(lay, dtype, "cuda", heads, kv_heads, key_lens=torch.tensor([lay.seq_len, 120]))


@pytest.mark.cuda
def test_module_and_compile_on_cuda():
    torch.manual_seed(0)
    mod = SparseSelfAttention(256, 4, 2, lambda n: sliding_window(n, 64)).cuda()
    mod.prepare(192, device="cuda")
    x = torch.randn(2, 192, 256, device="cuda", requires_grad=True)
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    out, want = compiled(x), mod(x)
    assert rel_err(out, want) < 1e-5
    gx = torch.autograd.grad(out.sum(), x)[0]
    assert rel_err(gx, torch.autograd.grad(want.sum(), x)[0]) < 1e-5


def test_plumbing_on_cpu():
    # the same helpers against the CPU kernels (block 64 layouts, as CUDA needs)
    _check(neighborhood_2d((10, 10), 3, prefix=1), torch.float32, "cpu", 4, 1)
    _check(sliding_window(130, 20), torch.float32, "cpu", 4, 2, key_lens=torch.tensor([130, 41]))
    _check(CHUNKS[1](), torch.float32, "cpu", 4, 2, key_lens=torch.tensor([300, 120]))
    _check(LAYOUTS[3](), torch.float32, "cpu", 4, 2, key_lens=torch.tensor([248, 100]))
