"""vilg.flash_attn (flash-attn's API) against an independent float64 reference written from
flash-attn's documented semantics: forward and gradients, causal / window / chunk (Lq < Lk) /
GQA / varlen / KV cache, on the CPU."""

import math

import pytest
import torch
from reference import rel_err

import vilg.flash_attn as fa

# The one capability check for the score modifiers and left padding (key_starts).


def ref_one(q, k, v, *, scale=None, causal=False, window=(-1, -1), softcap=0.0, slopes=None,
            key_start=0):  # fmt: skip
    """One sample, float64: q [Lq, H, D], k, v [Lk, Hk, D] -> (out [Lq, H, D], lse [H, Lq]).
    Query i sits at i + Lk - Lq; key j is allowed when inside the window and j >= key_start."""
    q, k, v = (t.double() for t in (q, k, v))
    lq, H, D = q.shape
    lk, hk = k.shape[:2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    k, v = (t.repeat_interleave(H // hk, 1) for t in (k, v))
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    pos = torch.arange(lq)[:, None] + lk - lq
    j = torch.arange(lk)[None, :]
    if slopes is not None:
        s = s - slopes.double()[:, None, None] * (pos - j).abs()
    left, right = window
    ok = j >= key_start
    if causal:
        ok = ok & (j <= pos)
    if left >= 0:
        ok = ok & (j >= pos - left)
    if right >= 0:
        ok = ok & (j <= pos + right)
    s = s.masked_fill(~ok, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("hij,jhd->ihd", p, v), lse


def ref_batch(q, k, v, slopes=None, **kw):
    outs = []
    for b in range(q.shape[0]):
        sl = None if slopes is None else (slopes[b] if slopes.dim() == 2 else slopes)
        outs.append(ref_one(q[b], k[b], v[b], slopes=sl, **kw)[0])
    return torch.stack(outs)


def _inputs(B, lq, lk, H, hk, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, lq, H, D, generator=g, dtype=dtype)
    k = torch.randn(B, lk, hk, D, generator=g, dtype=dtype)
    v = torch.randn(B, lk, hk, D, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def _check_grads(out, want, ins, tol=1e-4):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    got = torch.autograd.grad(out, ins, g)
    exp = torch.autograd.grad(want, ins, g.double())
    for n, a, b in zip("qkv", got, exp):
        assert rel_err(a, b) < tol, n


CASES = [  # (Lq, Lk, H, Hk, causal, window)
    (75, 75, 4, 4, False, (-1, -1)),
    (75, 75, 4, 2, True, (-1, -1)),
    (130, 130, 2, 1, True, (20, 0)),  # sliding window, MQA
    (100, 100, 4, 2, False, (9, 9)),  # bidirectional centred window
    (100, 100, 2, 2, False, (12, 3)),  # asymmetric window
    (40, 150, 4, 2, True, (-1, -1)),  # a chunk of queries against a KV cache
    (40, 150, 2, 2, True, (30, -1)),  # chunk + window (causal clamps right to 0)
    (40, 150, 4, 1, False, (-1, -1)),  # cross-attention: every query sees every key
    (33, 90, 2, 2, False, (10, 7)),  # chunk, window reaching past the query
    (1, 77, 4, 2, True, (-1, -1)),  # one decoding step
]


@pytest.mark.parametrize("lq,lk,H,hk,causal,window", CASES)
def test_func_matches_reference(lq, lk, H, hk, causal, window):
    q, k, v = _inputs(2, lq, lk, H, hk)
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window)
    assert out.shape == q.shape and out.is_contiguous()
    want = ref_batch(q, k, v, causal=causal, window=window)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))


def test_scale_and_half_precision():
    q, k, v = _inputs(1, 64, 64, 2, 2, D=32)
    out = fa.flash_attn_func(q, k, v, softmax_scale=0.3, causal=True)
    assert rel_err(out, ref_batch(q, k, v, scale=0.3, causal=True)) < 1e-5
    qh, kh, vh = (t.detach().bfloat16() for t in (q, k, v))
    out = fa.flash_attn_func(qh, kh, vh, causal=True)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref_batch(qh, kh, vh, causal=True)) < 2e-2


def test_strided_inputs():
    """Views of a fused projection are read in place; a non-contiguous last dim is copied."""
    q, k, v = _inputs(2, 70, 70, 4, 4)
    want = fa.flash_attn_func(q, k, v, causal=True)
    fused = torch.cat([q, k, v], 2)  # [B, L, 3H, D]: q, k, v as strided views
    got = fa.flash_attn_func(fused[:, :, :4], fused[:, :, 4:8], fused[:, :, 8:], causal=True)
    assert rel_err(got, want) < 1e-6
    qt = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2)  # stride(-1) != 1
    assert rel_err(fa.flash_attn_func(qt, k, v, causal=True), want) < 1e-6


def test_more_queries_than_keys_without_alignment():
    """flash-attn allows seqlen_q > seqlen_k; with no causal / window mask the keys are
    padded on the right and masked."""
    q, k, v = _inputs(2, 90, 50, 2, 1)
    out = fa.flash_attn_func(q, k, v)
    want = ref_batch(q, k, v)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))


def test_packed_variants():
    q, k, v = _inputs(2, 70, 70, 4, 4)
    want = fa.flash_attn_func(q, k, v, causal=True)
    qkv = torch.stack([q, k, v], 2)
    assert torch.equal(fa.flash_attn_qkvpacked_func(qkv, causal=True), want)
    kv = torch.stack([k, v], 2)
    assert torch.equal(fa.flash_attn_kvpacked_func(q, kv, causal=True), want)


def _pack(lens, H, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lens), H, D, generator=g, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return x, cu


def _varlen_ref(q, k, v, cu_q, cu_k, **kw):
    outs = []
    for b in range(cu_q.numel() - 1):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        outs.append(ref_one(q[sq], k[sk], v[sk], **kw)[0])
    return torch.cat(outs)


@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (True, (10, 0)), (False, (6, 6))])
def test_varlen_self_attention(causal, window):
    lens = [37, 80, 5, 64]
    q, cu = _pack(lens, 4, seed=1)
    k, _ = _pack(lens, 2, seed=2)
    v, _ = _pack(lens, 2, seed=3)
    out = fa.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                    window_size=window)  # fmt: skip
    assert out.shape == q.shape
    want = _varlen_ref(q, k, v, cu, cu, causal=causal, window=window)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))
    qkv = torch.stack([q, torch.cat([k, k], 1), torch.cat([v, v], 1)], 1)
    packed = fa.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lens), causal=causal,
                                                 window_size=window)  # fmt: skip
    kv = torch.stack([k, v], 1)
    assert torch.equal(
        fa.flash_attn_varlen_kvpacked_func(q, kv, cu, cu, max(lens), max(lens), causal=causal,
                                           window_size=window),
        out,
    )  # fmt: skip
    assert packed.shape == out.shape


def test_varlen_cross_attention_any_lengths():
    """Different query and key lengths per sample, no causal / window mask: right padding."""
    lq, lk = [20, 70, 3], [90, 10, 33]
    q, cu_q = _pack(lq, 4, seed=4)
    k, cu_k = _pack(lk, 2, seed=5)
    v, _ = _pack(lk, 2, seed=6)
    out = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk))
    want = _varlen_ref(q, k, v, cu_q, cu_k)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))


def test_varlen_shared_offset_chunks():
    """Causal chunks whose query / key lengths differ per sample need each sample's own
    bottom-right alignment: left padding with key_starts."""
    lq, lk = [5, 12], [40, 30]
    q, cu_q = _pack(lq, 2, seed=7)
    k, cu_k = _pack(lk, 2, seed=8)
    v, _ = _pack(lk, 2, seed=9)
    out = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 40, causal=True)
    want = _varlen_ref(q, k, v, cu_q, cu_k, causal=True)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))


def _cache(B, S, hk, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, hk, D, generator=g), torch.randn(B, S, hk, D, generator=g)


@pytest.mark.parametrize("lq", [1, 4])
def test_kvcache_append_and_attend(lq):
    B, S, H, hk, D = 3, 96, 4, 2, 16
    kc, vc = _cache(B, S, hk)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, lq, H, D, generator=g)
    kn, vn = torch.randn(B, lq, hk, D, generator=g), torch.randn(B, lq, hk, D, generator=g)
    seqlens = torch.tensor([10, 50, 50], dtype=torch.int32)
    k0 = kc.clone()
    out, lse = fa.flash_attn_with_kvcache(
        q, kc, vc, kn, vn, cache_seqlens=seqlens, causal=True, return_softmax_lse=True
    )
    for b, n in enumerate(seqlens.tolist()):
        assert torch.equal(kc[b, n : n + lq], kn[b]) and torch.equal(vc[b, n : n + lq], vn[b])
        assert torch.equal(kc[b, :n], k0[b, :n]) and torch.equal(kc[b, n + lq :], k0[b, n + lq :])
        want, want_lse = ref_one(q[b], kc[b, : n + lq], vc[b, : n + lq], causal=True)
        assert rel_err(out[b], want) < 1e-5
        assert rel_err(lse[b], want_lse) < 1e-5


def test_kvcache_decode_loop_shares_layouts():
    """Token-by-token decoding: one query per step sees its whole cache, so steps within a
    64-key tile share one layout (no build per step)."""
    kc, vc = _cache(2, 200, 2, seed=4)
    g = torch.Generator().manual_seed(5)
    lens = torch.tensor([70, 100], dtype=torch.int32)
    fa.LAYOUTS.clear()
    for _ in range(5):
        q = torch.randn(2, 1, 4, 16, generator=g)
        kn, vn = torch.randn(2, 1, 2, 16, generator=g), torch.randn(2, 1, 2, 16, generator=g)
        out = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)
        lens += 1
        for b in range(2):
            n = int(lens[b])
            assert rel_err(out[b], ref_one(q[b], kc[b, :n], vc[b, :n], causal=True)[0]) < 1e-5
    assert len(fa.LAYOUTS._cache) == 1


def test_kvcache_batch_idx_window_and_no_append():
    kc, vc = _cache(4, 80, 2, seed=2)
    q = torch.randn(2, 2, 4, 16, generator=torch.Generator().manual_seed(3))
    idx = torch.tensor([3, 1], dtype=torch.int32)
    out = fa.flash_attn_with_kvcache(
        q, kc, vc, cache_seqlens=torch.tensor([70, 33]), cache_batch_idx=idx,
        window_size=(8, 0), causal=True,
    )  # fmt: skip
    for b, (row, n) in enumerate([(3, 70), (1, 33)]):
        want, _ = ref_one(q[b], kc[row, :n], vc[row, :n], causal=True, window=(8, -1))
        assert rel_err(out[b], want) < 1e-5
    whole = fa.flash_attn_with_kvcache(q, kc[:2], vc[:2])  # no cache_seqlens: the whole cache
    for b in range(2):
        assert rel_err(whole[b], ref_one(q[b], kc[b], vc[b])[0]) < 1e-5


def test_layouts_are_cached():
    fa.LAYOUTS.clear()
    q, k, v = _inputs(1, 64, 64, 2, 2)
    fa.flash_attn_func(q, k, v, causal=True)
    lay = fa.LAYOUTS.get((64, 64, -1, 0))
    fa.flash_attn_func(q, k, v, causal=True)
    assert fa.LAYOUTS.get((64, 64, -1, 0)) is lay
    assert lay.dense_mask().equal(torch.ones(64, 64, dtype=torch.bool).tril())


def test_errors():
    q, k, v = _inputs(1, 16, 16, 2, 2)
    with pytest.raises(ValueError, match="dropout"):
        fa.flash_attn_func(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="return_attn_probs"):
        fa.flash_attn_func(q, k, v, return_attn_probs=True)
    with pytest.raises(ValueError, match="window_size"):
        fa.flash_attn_func(q, k, v, window_size=(-2, 0))
    with pytest.raises(ValueError, match="window_size"):
        fa.flash_attn_func(q, k, v, window_size=4)
    with pytest.raises(ValueError, match=r"\[batch, seqlen, heads, head_dim\]"):
        fa.flash_attn_func(q[0], k, v)
    with pytest.raises(ValueError, match="multiple"):
        fa.flash_attn_func(q, torch.randn(1, 16, 3, 16), torch.randn(1, 16, 3, 16))
    x, cu = _pack([4, 6], 2)
    with pytest.raises(NotImplementedError, match="paged"):
        fa.flash_attn_varlen_func(x, x, x, cu, cu, 6, 6, block_table=cu)
    with pytest.raises(ValueError, match="rise from 0"):
        fa.flash_attn_varlen_func(x, x, x, cu + 1, cu, 6, 6)
    with pytest.raises(ValueError, match="longest"):
        fa.flash_attn_varlen_func(x, x, x, cu, cu, 5, 5)
    with pytest.raises(TypeError, match="int32"):
        fa.flash_attn_varlen_func(x, x, x, cu.float(), cu, 6, 6)
    kc, vc = _cache(1, 8, 2)
    qd = torch.randn(1, 1, 2, 16)
    with pytest.raises(NotImplementedError, match="rotary"):
        fa.flash_attn_with_kvcache(qd, kc, vc, rotary_cos=torch.ones(8, 8))
    with pytest.raises(ValueError, match="cache's length"):
        fa.flash_attn_with_kvcache(qd, kc, vc, kc[:, :2], vc[:, :2], cache_seqlens=7)


# ---- score modifiers and left padding (need the kernels' modifiers) ---------------------------
@pytest.mark.parametrize("lq,lk,causal,window", [(75, 75, True, (-1, -1)), (30, 100, True, (20, 0)),
                                                 (60, 60, False, (-1, -1))])  # fmt: skip
def test_softcap_and_alibi(lq, lk, causal, window):
    q, k, v = _inputs(2, lq, lk, 4, 2, seed=5)
    q.data *= 3  # large scores, where the cap bites
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=2.0)
    want = ref_batch(q, k, v, causal=causal, window=window, softcap=2.0)
    assert rel_err(out, want) < 1e-5
    _check_grads(out, want, (q, k, v))
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    for s in (slopes, torch.stack([slopes, slopes.flip(0)])):
        out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, alibi_slopes=s)
        want = ref_batch(q, k, v, slopes=s, causal=causal, window=window)
        assert rel_err(out, want) < 1e-5
        _check_grads(out, want, (q, k, v))


def test_more_queries_than_keys_causal():
    q, k, v = _inputs(2, 90, 50, 2, 1)
    out = fa.flash_attn_func(q, k, v, causal=True)
    want = ref_batch(q, k, v, causal=True)  # the first 40 rows see no key: zeros
    assert rel_err(out, want) < 1e-5 and out[:, :40].abs().max() == 0
    _check_grads(out, want, (q, k, v))


def test_kvcache_leftpad_softcap_alibi():
    kc, vc = _cache(2, 64, 2, seed=6)
    q = torch.randn(2, 3, 4, 16, generator=torch.Generator().manual_seed(7))
    slopes = torch.tensor([0.3, 0.2, 0.1, 0.05])
    pad = torch.tensor([5, 0], dtype=torch.int32)
    out = fa.flash_attn_with_kvcache(
        q, kc, vc, cache_seqlens=torch.tensor([40, 64]), cache_leftpad=pad, causal=True,
        softcap=3.0, alibi_slopes=slopes,
    )  # fmt: skip
    for b, n in enumerate([40, 64]):
        want, _ = ref_one(q[b], kc[b, :n], vc[b, :n], causal=True, softcap=3.0, slopes=slopes,
                          key_start=int(pad[b]))  # fmt: skip
        assert rel_err(out[b], want) < 1e-5
