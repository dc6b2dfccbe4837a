"""GPTConfig.attn_impl: vilg's kernels, masked SDPA and eager dense attention are the same
function of the same weights (logits and gradients) in every direction, padded text included."""

import pytest
import torch

from vilg.app.model.transformer import (
    DIRS,
    I2T,
    T2I,
    VQA,
    GPTConfig,
    UnifiedTransformer,
    dense_mask,
)

T, A, GRID = 37, 6, (8, 8)


def _model():
    torch.manual_seed(0)
    cfg = GPTConfig(
        text_vocab=50, image_vocab=40, text_len=T + A, grid=GRID, n_layer=3, n_head=2, n_embd=32
    )
    return UnifiedTransformer(cfg)


def _batch():
    g = torch.Generator().manual_seed(3)
    return {
        "text_ids": torch.randint(0, 50, (3, T), generator=g),
        "image_ids": torch.randint(0, 40, (3, GRID[0] * GRID[1]), generator=g),
        "answer_ids": torch.randint(0, 50, (3, A), generator=g),
        # 0: a text2image text query then has no allowed key (vilg outputs 0 there)
        "text_lens": torch.tensor([T, 11, 0]),
    }


def _run(model, direction, b):
    h = model(
        direction,
        b["text_ids"],
        b["image_ids"],
        text_lens=b["text_lens"] if direction != I2T else None,
        answer_ids=b["answer_ids"] if direction == VQA else None,
    )
    text, image = model.split(direction, h, T)
    logits = torch.cat(
        [model.text_logits(text).flatten(1), model.image_logits(image).flatten(1)], 1
    )
    model.zero_grad()
    # a fixed random projection: every logit's gradient reaches the weights
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    (logits * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("direction", DIRS)
def test_backends_agree(direction):
    model, b = _model(), _batch()
    out = {}
    for impl in ("vilg", "sdpa", "eager"):
        model.cfg.attn_impl = impl
        out[impl] = _run(model, direction, b)
    logits, grads = out["vilg"]
    assert torch.isfinite(logits).all()
    for impl in ("sdpa", "eager"):
        torch.testing.assert_close(out[impl][0], logits, atol=1e-5, rtol=1e-5)
        assert out[impl][1].keys() == grads.keys()
        for n, g in grads.items():
            # relative to the tensor's largest entry: summed grads (biases) reach ~10
            err = (out[impl][1][n] - g).abs().max() / g.abs().max().clamp(min=1.0)
            assert err < 1e-5, (impl, n, float(err))


def test_dense_mask_pads_text_and_reports_empty_rows():
    model = _model()
    lay = model.layouts_for(T2I, T)[0]
    mask, empty = dense_mask(lay, torch.tensor([T, 5, 0]), "cpu")
    assert mask.shape == (3, 1, lay.seq_len, lay.seq_len)
    assert empty[2, 0, :T].all() and not empty[2, 0, T:].any() and not empty[:2].any()
    assert mask[1, 0, T, :5].all() and not mask[1, 0, T, 5:T].any()
    assert dense_mask(lay, None, "cpu")[0].shape == (lay.seq_len, lay.seq_len)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(attn_impl="flash")
