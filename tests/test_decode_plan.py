"""DecodePlan (decoding attention checked once per generation, position as int or tensor) and
the model's fast decoding path built on it (LayerCache, prefix prefill, Stepper), on the CPU."""

from __future__ import annotations

import pytest
import torch
from test_decode import dense_row

import vilg.ops as O
from vilg._ext import C
from vilg.app.model.stepper import Stepper
from vilg.app.model.transformer import I2T, T2I, VQA, GPTConfig, UnifiedTransformer
from vilg.layouts import DIRECTIONS, KINDS, ernie_vilg
from vilg.ops._buffers import ref

TEXT, GRID = 11, (5, 7)


def _case(kind, direction, B=3, H=2, D=16, extra=3, seed=0):
    A = 6 if direction == "vqa" else 0
    layout = ernie_vilg(kind, TEXT, GRID, direction=direction, window=3, answer_len=A)
    g = torch.Generator().manual_seed(seed)
    S = layout.seq_len + extra  # a cache longer than the sequence is fine
    k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(2))
    q = torch.randn(B, H, D, generator=g)
    lens = torch.tensor([TEXT, 3, 0][:B])
    return layout, q, k, v, lens


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_plan_matches_dense_at_every_position(kind, direction):
    layout, q, k, v, lens = _case(kind, direction, seed=hash((kind, direction)) % 2**31)
    plan = O.DecodePlan(layout, k, v, text_lens=lens)
    pos_t = torch.zeros(1, dtype=torch.int64)
    for pos in [*range(0, layout.seq_len, 2), layout.seq_len - 1]:
        want = dense_row(q, k, v, layout, pos, lens)
        by_int = plan(q, pos)
        pos_t.fill_(pos)
        by_tensor = plan(q, pos_t)
        torch.testing.assert_close(by_int.double(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(by_int, by_tensor)
        assert torch.equal(by_int, O.decode_attention(q, k, v, layout, pos, text_lens=lens))


def test_query_keys_is_the_dense_mask_as_csr():
    layout = ernie_vilg("conv", 9, (6, 5), direction="vqa", window=3, answer_len=4)
    ptr, keys = layout.query_keys()
    m = layout.dense_mask()
    assert ptr.dtype == keys.dtype == torch.int32 and ptr.numel() == layout.seq_len + 1
    for pos in range(layout.seq_len):
        got = keys[int(ptr[pos]) : int(ptr[pos + 1])]
        assert torch.equal(got.long(), torch.nonzero(m[pos]).flatten())
    assert layout.max_keys_per_query == int(m.sum(1).max())


def test_plan_rejects_bad_input():
    layout, q, k, v, lens = _case("row", "text2image")
    plan = O.DecodePlan(layout, k, v, text_lens=lens)
    with pytest.raises(ValueError, match="q must be"):
        plan(q[:, :1], 3)
    with pytest.raises(ValueError, match="q must be"):
        plan(q.double(), 3)
    with pytest.raises(ValueError, match="outside the layout"):
        plan(q, layout.seq_len)
    with pytest.raises(ValueError, match="outside the layout"):
        plan(q, torch.tensor([-1]))
    with pytest.raises(ValueError, match="one int64 element"):
        plan(q, torch.tensor([3], dtype=torch.int32))
    with pytest.raises(ValueError, match="beyond the cache"):  # the cache must hold every key
        O.DecodePlan(layout, k[:, :, :20], v[:, :, :20])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 11\]"):
        O.DecodePlan(layout, k, v, text_lens=torch.tensor([12, 0, 0]))
    # the kernel's own checks: key_ptr without pos, and a key_ptr pointing past the key list
    ptr, keys = layout.query_keys()
    out = torch.empty_like(q)
    args = [ref(q), ref(k), ref(v), ref(keys), ref(out), None, 1, None, 0, TEXT, 0.25, 0]
    with pytest.raises(ValueError, match="go together"):
        C().decode_attention(*args, ref(ptr), None)
    bad, pos = ptr.clone(), torch.tensor([4])  # (named: a ref does not keep its tensor alive)
    bad[5:] = keys.numel() + 9
    with pytest.raises(ValueError, match="outside keys"):
        C().decode_attention(*args, ref(bad), ref(pos))


def _model(grid=(4, 6), text_len=16):
    torch.manual_seed(0)
    cfg = GPTConfig(text_vocab=40, image_vocab=30, text_len=text_len, grid=grid, n_layer=3,
                    n_head=2, n_embd=32)  # fmt: skip
    return UnifiedTransformer(cfg).eval()


@torch.no_grad()
def test_prefix_prefill_equals_the_full_forward():
    m = _model()
    B, T, N = 3, 9, m.cfg.n_image
    text = torch.randint(0, 40, (B, T))
    lens = torch.tensor([9, 4, 1])
    image = torch.randint(0, 30, (B, N))
    full = m(T2I, text, image, lens)
    for n in (1, 5):
        part = m(T2I, text, image[:, :n], lens)
        torch.testing.assert_close(part, full[:, : T + n], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="text2image prefixes only"):
        m(I2T, text, image[:, :5])


@torch.no_grad()
@pytest.mark.parametrize("direction", [T2I, I2T, VQA])
def test_planned_steps_equal_the_checked_op_and_the_forward(direction):
    """The step through LayerCache plans (int and tensor position) and through the public op on
    plain (k, v) tuples give the same hidden states, equal to the full forward's."""
    m = _model()
    B, N, Tm = 2, m.cfg.n_image, m.cfg.text_len
    g = torch.Generator().manual_seed(1)
    # feed[:, pos - base] is the input token at sequence position pos
    if direction == T2I:
        T, lens = 7, torch.tensor([7, 3])
        text = torch.randint(0, 40, (B, T), generator=g)
        image = torch.randint(0, 30, (B, N), generator=g)
        full = m(T2I, text, image, lens)
        feed, base, first, src = image, T, T + 1, T
    elif direction == I2T:
        T, lens = Tm, None
        text = torch.randint(0, 40, (B, T), generator=g)
        image = torch.randint(0, 30, (B, N), generator=g)
        full = m(I2T, text, image)
        feed, base, first, src = text, N, N + 3, T  # a 3-token prompt
    else:
        T, lens = 5, torch.tensor([5, 2])
        text = torch.randint(0, 40, (B, T), generator=g)
        image = torch.randint(0, 30, (B, N), generator=g)
        ans = torch.randint(0, 40, (B, Tm - T), generator=g)
        full = m(VQA, text, image, lens, answer_ids=ans)
        feed, base, first, src = ans, T + N, T + N + 1, T
    outs = []
    for kind in ("plan-int", "plan-tensor", "plain"):
        caches = m.new_caches(B, full.shape[1], "cpu")
        if kind == "plain":
            caches = [(c[0], c[1]) for c in caches]
        if direction == T2I:  # prefill up to first - 1
            m(T2I, text, image[:, : first - base], lens, caches=caches)
        elif direction == I2T:
            m(I2T, text[:, : first - base], image, caches=caches)
        else:
            m(VQA, text, image, lens, caches=caches, answer_ids=ans[:, : first - base])
        hs = []
        for pos in range(first, first + 4):
            p = torch.tensor([pos]) if kind == "plan-tensor" else pos
            hs.append(m.step(direction, feed[:, pos - base], p, src, caches, lens))
        outs.append(torch.stack(hs, 1))
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[0], full[:, first : first + 4], rtol=1e-5, atol=1e-5)


def _greedy(m, mode, B=2, T=6, steps=10):
    g = torch.Generator().manual_seed(3)
    text = torch.randint(0, 40, (B, T), generator=g)
    lens = torch.tensor([T, 2])
    caches = m.new_caches(B, T + m.cfg.n_image, "cpu")
    h = m(T2I, text, torch.full((B, 1), m.boi), lens, caches=caches)[:, T]
    st = Stepper(m, T2I, T, caches, lens, head=m.image_logits, mode=mode)
    tok = m.image_logits(h).argmax(-1)
    out = [tok]
    for j in range(1, steps):
        tok = st(tok, T + j).argmax(-1)
        out.append(tok)
    return torch.stack(out, 1)


def test_stepper_modes_and_errors():
    m = _model()
    caches = m.new_caches(1, 40, "cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        Stepper(m, T2I, 6, caches, mode="fast")
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        Stepper(m, T2I, 6, caches, mode="cuda-graph")
    assert Stepper(m, T2I, 6, caches).mode == "eager"
    a = _greedy(m, "eager")
    assert a.shape == (2, 10) and torch.equal(a, _greedy(m, "eager"))


@pytest.mark.slow
def test_compiled_step_gives_the_same_tokens():
    m = _model()
    assert torch.equal(_greedy(m, "compile", steps=12), _greedy(m, "eager", steps=12))


@pytest.mark.cuda
def test_cuda_graph_step_gives_the_same_tokens():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    m = _model().cuda()

    def run(mode):
        g = torch.Generator().manual_seed(3)
        B, T = 4, 6
        text = torch.randint(0, 40, (B, T), generator=g).cuda()
        lens = torch.tensor([T, 2, 6, 1]).cuda()
        caches = m.new_caches(B, T + m.cfg.n_image, "cuda")
        with torch.no_grad():
            h = m(T2I, text, torch.full((B, 1), m.boi, device="cuda"), lens, caches=caches)
            st = Stepper(m, T2I, T, caches, lens, head=m.image_logits, mode=mode)
            tok = m.image_logits(h[:, T]).argmax(-1)
            out = [tok]
            for j in range(1, m.cfg.n_image):
                tok = st(tok, T + j).argmax(-1)
                out.append(tok)
        return torch.stack(out, 1)

    assert torch.equal(run("cuda-graph"), run("eager"))


@torch.no_grad()
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_dense_decode_steps_equal_the_forward(impl):
    """The dense KV-cache step (the benchmarks' baseline) under the same masks and padding."""
    m = _model()
    B, T, N = 2, 7, m.cfg.n_image
    g = torch.Generator().manual_seed(5)
    text = torch.randint(0, 40, (B, T), generator=g)
    image = torch.randint(0, 30, (B, N), generator=g)
    lens = torch.tensor([7, 3])
    full = m(T2I, text, image, lens)
    m.cfg.attn_impl = impl
    for tensor_pos in (False, True):
        caches = m.new_caches(B, T + N, "cpu")
        m(T2I, text, image[:, :1], lens, caches=caches)
        hs = []
        for p in range(T + 1, T + N):
            pos = torch.tensor([p]) if tensor_pos else p
            hs.append(m.step(T2I, image[:, p - T], pos, T, caches, lens))
        torch.testing.assert_close(torch.stack(hs, 1), full[:, T + 1 :], rtol=1e-5, atol=1e-5)
