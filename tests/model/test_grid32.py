"""The model at ERNIE-ViLG's 32x32 grid (and odd grids, text lengths off the 64-token tiles) at
a tiny width: every layer kind of the schedule runs a multi-tile layout inside the model.

The sparse model (fp32 kernels) is checked against a float64 copy of itself whose attention is
dense softmax under each layer's `Layout.dense_mask()`."""

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import attention, rel_err, spec_mask

from vilg.app.model.transformer import I2T, T2I, VQA, GPTConfig, UnifiedTransformer
from vilg.app.model.vqgan import VQGAN, VQConfig

TEXT_VOCAB, CODES, TEXT_LEN = 53, 40, 80
# (grid, text length): the paper's grid with 37 text tokens (L = 1061, 17 tiles of 64), an odd
# grid with 70 (the text crosses a tile edge), a small odd grid (checked against the spec)
CASES = [((32, 32), 37), ((31, 17), 70), ((5, 7), 37)]
IDS = ["32x32-T37", "31x17-T70", "5x7-T37"]


def _model(grid, n_layer=4, code_dim=0, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(text_vocab=TEXT_VOCAB, image_vocab=CODES, text_len=TEXT_LEN, grid=grid,
                    n_layer=n_layer, n_head=2, n_embd=32, code_dim=code_dim)  # fmt: skip
    m = UnifiedTransformer(cfg)
    # the scaled-down init leaves the blocks near identity; larger weights make attention
    # patterns (and any mask error) show in the outputs
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _batch(direction, grid, T, seed=1, B=2):
    g = torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1]
    b = {
        "text": torch.randint(4, TEXT_VOCAB, (B, T), generator=g),
        "image": torch.randint(0, CODES, (B, N), generator=g),
        "lens": torch.tensor([T, T - 5])[2 - B :],  # the last sample's text is padded
        "answer": None,
    }
    if direction == VQA:
        b["answer"] = torch.randint(4, TEXT_VOCAB, (B, 6), generator=g)
    return b


def _forward(m, direction, b):
    return m(direction, b["text"], b["image"], b["lens"], answer_ids=b["answer"])


def _dense_forward(m, direction, b):
    """UnifiedTransformer.forward with dense masked attention (reference.attention) under each
    layer's dense mask; m is a float64 copy of the model."""
    T = b["text"].shape[1]
    A = 0 if b["answer"] is None else b["answer"].shape[1]
    x = m.embed(direction, b["text"], b["image"], b["answer"], b["lens"])
    for blk, lay in zip(m.blocks, m.layouts_for(direction, T, A)):
        B, L, C = x.shape
        qkv = blk.attn.qkv(blk.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, L, m.cfg.n_head, -1).transpose(1, 2) for t in qkv)
        y = attention(q, k, v, lay.dense_mask(), text_lens=b["lens"], text_segment=lay.text_segment)
        x = x + blk.attn.proj(y.transpose(1, 2).reshape(B, L, C))
        x = x + blk.mlp(blk.ln2(x))
    return m.ln_f(x)


def _loss(m, direction, h, b, targets):
    """The trainer's next-token losses: image codes for text2image, text otherwise."""
    txt, img = m.split(direction, h, b["text"].shape[1])
    lg = m.image_logits(img) if direction == T2I else m.text_logits(txt)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), targets.reshape(-1).long())


def _targets(direction, b, seed=2):
    g = torch.Generator().manual_seed(seed)
    if direction == T2I:
        return torch.randint(0, CODES, b["image"].shape, generator=g)
    n = b["answer"].shape[1] if direction == VQA else b["text"].shape[1]
    return torch.randint(0, TEXT_VOCAB, (b["text"].shape[0], n), generator=g)


@pytest.mark.parametrize("direction", [T2I, I2T, VQA])
@pytest.mark.parametrize(("grid", "T"), CASES, ids=IDS)
def test_training_step_equals_a_float64_dense_reference(grid, T, direction):
    m = _model(grid).train()
    assert m.kinds == ["row", "row", "column", "conv"]
    ref = copy.deepcopy(m).double()
    # one padded sample at 32x32 (the float64 dense reference is most of the time); two, one
    # of them padded, elsewhere
    b = _batch(direction, grid, T, B=1 if grid == (32, 32) else 2)
    targets = _targets(direction, b)

    h = _forward(m, direction, b)
    loss = _loss(m, direction, h, b, targets)
    loss.backward()
    h_ref = _dense_forward(ref, direction, b)
    loss_ref = _loss(ref, direction, h_ref, b, targets)
    loss_ref.backward()

    assert h.shape == (len(b["text"]), T + grid[0] * grid[1] + (6 if direction == VQA else 0), 32)
    assert rel_err(h, h_ref) < 1e-5
    assert abs(loss.item() - loss_ref.item()) < 1e-5 * abs(loss_ref.item())
    n_grads = 0
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        if p_ref.grad is None or not p_ref.grad.any():
            assert p.grad is None or not p.grad.any(), name
            continue
        assert rel_err(p.grad, p_ref.grad) < 1e-4, name
        n_grads += 1
    assert n_grads > 4 * 12  # every block parameter got a gradient


def test_the_small_odd_grid_masks_are_the_spec():
    m = _model((5, 7))
    for direction, A in ((T2I, 0), (I2T, 0), (VQA, 6)):
        for kind, lay in zip(m.kinds, m.layouts_for(direction, 37, A)):
            want = spec_mask(kind, 37, (5, 7), direction, window=m.cfg.window, answer_len=A)
            assert torch.equal(lay.dense_mask(), want), (direction, kind)


def test_layouts_at_32x32_span_many_tiles():
    m = _model((32, 32))
    for lay in m.layouts_for(T2I, 37):
        assert lay.num_blocks == 17 and lay.num_tiles > 17
        assert lay.num_tiles < lay.num_blocks**2  # sparse: tiles are skipped


def test_end_to_end_head_drives_a_decoder_at_32x32():
    m = _model((32, 32), code_dim=8).train()
    torch.manual_seed(3)
    # f = 4 at 128 px: a 2x2 pixel-unshuffle stem and one halving of a conv trunk
    vq = VQGAN(VQConfig(image_size=128, patch=2, channels=(8, 16), token_kernel=3, blocks=1,
                        codebook_size=CODES, code_dim=8))  # fmt: skip
    assert vq.cfg.grid == (32, 32)
    b = _batch(T2I, (32, 32), 37)
    h = _forward(m, T2I, b)
    _, hi = m.split(T2I, h, 37)
    z = m.z_head(hi).transpose(1, 2).reshape(2, 8, 32, 32)
    x = vq.decoder(z)
    assert x.shape == (2, 3, 128, 128)
    target = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    F.mse_loss(x, target).backward()
    for mod in (m.z_head, m.blocks[0], m.blocks[-1], vq.decoder):
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("size", "patch", "channels", "f"),
    [(256, 2, (8, 8, 16), 8), (128, 1, (4, 4, 8), 4), (128, 2, (8, 16), 4), (64, 2, (8, 8, 16), 8)],
)
def test_conv_trunk_tokenizer_shapes(size, patch, channels, f):
    torch.manual_seed(8)
    vq = VQGAN(VQConfig(image_size=size, patch=patch, channels=channels, token_kernel=3,
                        blocks=1, codebook_size=CODES, code_dim=8))  # fmt: skip
    g = size // f
    assert vq.cfg.f == f and vq.cfg.grid == (g, g)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    xr, idx, qloss, _ = vq(x)
    assert xr.shape == x.shape and idx.shape == (2, g, g)
    (vq.recon_loss(x, xr)["recon"] + qloss).backward()
    assert vq.encoder.net[1].weight.grad.abs().sum() > 0  # through the quantizer to the stem
    vq.eval()
    codes = vq.encode(x)
    assert codes.shape == (2, g, g) and vq.decode_indices(codes).shape == x.shape


@pytest.mark.parametrize(("grid", "T"), CASES[:2], ids=IDS[:2])
def test_kv_cache_steps_equal_the_full_forward(grid, T):
    """Prefill with the whole sequence, then re-run chosen positions with `step` (each step
    rewrites its own key / value): the hidden state must be the full forward's, also at
    positions deep in the grid (other tiles, last row / column)."""
    m = _model(grid).eval()
    N = grid[0] * grid[1]
    with torch.no_grad():
        b = _batch(T2I, grid, T)
        full = _forward(m, T2I, b)
        caches = m.new_caches(2, T + N, "cpu")
        m(T2I, b["text"], b["image"], b["lens"], caches=caches)
        for j in (1, grid[1], 65, N // 2 + 3, N - 1):
            h = m.step(T2I, b["image"][:, j], T + j, T, caches, b["lens"])
            assert torch.allclose(h, full[:, T + j], atol=1e-4), j

        b = _batch(I2T, grid, T)
        full = m(I2T, b["text"], b["image"])
        caches = m.new_caches(2, N + T, "cpu")
        m(I2T, b["text"], b["image"], caches=caches)
        for t in (1, 20, T - 1):
            h = m.step(I2T, b["text"][:, t], N + t, T, caches)
            assert torch.allclose(h, full[:, N + t], atol=1e-4), t

        b = _batch(VQA, grid, T)
        A = b["answer"].shape[1]
        full = _forward(m, VQA, b)
        caches = m.new_caches(2, N + TEXT_LEN, "cpu")
        m(VQA, b["text"], b["image"], b["lens"], caches=caches, answer_ids=b["answer"])
        for j in (1, A - 1):
            h = m.step(VQA, b["answer"][:, j], T + N + j, T, caches, b["lens"])
            assert torch.allclose(h, full[:, T + N + j], atol=1e-4), j


_TOK = {}


def _pipeline(image_size):
    """An untrained tiny generator behind a VQGAN with the paper's f = 8 (a 2x2 stem, then two
    halvings of a conv trunk): 256 px gives the 32x32 grid."""
    from vilg.app.data.prompts import corpus_text
    from vilg.app.data.text_tokenizer import TextTokenizer
    from vilg.app.generate import Pipeline

    if "tok" not in _TOK:
        _TOK["tok"] = TextTokenizer.train(corpus_text(0, 100), vocab_size=300)
    tok = _TOK["tok"]
    torch.manual_seed(5)
    vq = VQGAN(VQConfig(image_size=image_size, patch=2, channels=(8, 8, 16), token_kernel=3,
                        blocks=1, codebook_size=CODES, code_dim=8))  # fmt: skip
    assert vq.cfg.f == 8
    cfg = GPTConfig(text_vocab=tok.vocab_size, image_vocab=CODES, text_len=24, grid=vq.cfg.grid,
                    n_layer=4, n_head=2, n_embd=32)  # fmt: skip
    return Pipeline(tok, vq, UnifiedTransformer(cfg))


def _generates(pipe, size):
    out = pipe.generate(["a small red circle at the top left"], n=1, seed=0, top_k=5)
    n = (size // 8) ** 2
    assert out["images"].shape == (1, 1, 3, size, size)
    assert out["codes"].shape == (1, 1, n)
    assert int(out["codes"].min()) >= 0 and int(out["codes"].max()) < CODES


def test_pipeline_captions_and_answers_at_32x32():
    pipe = _pipeline(256)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    assert pipe.image_codes(images).shape == (2, 32 * 32)
    caps = pipe.caption(images, lang="en")
    assert len(caps) == 2 and all(isinstance(c, str) and c for c in caps)
    answers = pipe.answer(images[:1], "what color is the circle")
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_pipeline_generates_with_an_f8_tokenizer():
    _generates(_pipeline(64), 64)  # 8x8 codes: the decode loop end to end, quickly


@pytest.mark.slow  # 1024 decode steps: ~25 s on one core with the decode path of this commit
def test_pipeline_generates_at_32x32():
    _generates(_pipeline(256), 256)


@pytest.mark.slow  # ~1 min: every stage of the preset for a few steps, then a caption
def test_grid32_small_preset_trains_end_to_end(tmp_path):
    from vilg.app.generate import Pipeline
    from vilg.app.train.presets import get_preset
    from vilg.app.train.run import train_run

    short = ["data.train_size=40", "data.val_size=8", "vq.train.steps=3"]
    short += ["matcher.train.steps=2", "generator.train.steps=3"]
    train_run(get_preset("grid32-small", short), tmp_path, progress=False, log=lambda *a: None)
    pipe = Pipeline.load(tmp_path)
    assert pipe.gen.cfg.grid == (32, 32) and pipe.vq.cfg.f == 4
    assert pipe.gen.kinds == ["row", "row", "column", "conv"]
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    assert isinstance(pipe.caption(images)[0], str)
