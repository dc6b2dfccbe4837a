"""`vilg plan`: its counts against the models they describe."""

import json

import pytest
import torch
from reference import spec_mask
from torch.utils.flop_counter import FlopCounterMode

from vilg.app import plan as P
from vilg.app.cli import main
from vilg.app.model.transformer import DIRS, I2T, T2I, VQA, GPTConfig, UnifiedTransformer
from vilg.app.train.presets import get_preset


@pytest.mark.parametrize(
    "name", ["tiny", "demo", "real", "grid32-small", "ernie-vilg-300m", "ernie-vilg-10b"]
)
def test_analytic_params_equal_the_meta_model(name):
    gen, vq = P.build_meta(get_preset(name))
    assert next(gen.parameters()).device.type == "meta"
    assert P.generator_params(gen.cfg) == P.counted_params(gen)
    assert P.counted_params(gen)["total"] == sum(p.numel() for p in gen.parameters())
    assert gen.cfg.grid == vq.cfg.grid


def test_analytic_params_of_the_end_to_end_head():
    cfg = GPTConfig(text_vocab=37, image_vocab=29, text_len=11, grid=(5, 7), n_layer=3,
                    n_head=2, n_embd=24, code_dim=6)  # fmt: skip
    with torch.device("meta"):
        gen = UnifiedTransformer(cfg)
    assert P.generator_params(cfg) == P.counted_params(gen)


def test_paper_presets_have_the_paper_shapes():
    big, vq = P.build_meta(get_preset("ernie-vilg-10b"))
    c = big.cfg
    assert (c.n_layer, c.n_embd, c.n_head, c.grid, c.image_vocab) == (48, 4096, 64, (32, 32), 8192)
    assert (vq.cfg.f, vq.cfg.image_size) == (8, 256)
    assert 9.5e9 < P.generator_params(c)["total"] < 10.5e9  # "10B"
    small, _ = P.build_meta(get_preset("ernie-vilg-300m"))
    assert (small.cfg.n_layer, small.cfg.n_embd, small.cfg.n_head) == (24, 1024, 16)
    assert 0.3e9 < P.generator_params(small.cfg)["total"] < 0.4e9


def _small_model():
    torch.manual_seed(0)
    cfg = GPTConfig(text_vocab=41, image_vocab=23, text_len=9, grid=(5, 7), n_layer=5,
                    n_head=2, n_embd=16, window=3)  # fmt: skip
    return UnifiedTransformer(cfg)


@pytest.mark.parametrize("direction", DIRS)
def test_allowed_entries_match_the_dense_mask(direction):
    m = _small_model()
    seg = P.segments(m.cfg, direction, answer_len=3)
    ent = P.attention_per_layer(m, direction, seg, {})
    assert len(ent["sparse"]) == m.cfg.n_layer
    T, A = seg["text"], seg["answer"]
    for kind, n in zip(m.kinds, ent["sparse"]):
        ref = spec_mask(kind, T, (5, 7), direction, window=3, answer_len=A)
        assert n == int(ref.sum()), kind
    full = spec_mask("full", T, (5, 7), direction, answer_len=A)
    assert ent["full"] == int(full.sum())
    assert ent["full"] > max(ent["sparse"])


@pytest.mark.parametrize("direction", DIRS)
def test_linear_flops_match_a_flop_counter(direction):
    """torch's FlopCounterMode counts the matmuls of a real forward (the sparse attention is a
    custom op it does not see): they must be the plan's linear FLOPs."""
    m = _small_model().eval()
    fl = P.direction_flops(m, direction, answer_len=3, cache={})
    g = torch.Generator().manual_seed(3)
    T, A = fl["text_len"], fl["answer_len"]
    text = torch.randint(0, 41, (1, T), generator=g)
    img = torch.randint(0, 23, (1, 35), generator=g)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        if direction == VQA:
            ans = torch.randint(0, 41, (1, A), generator=g)
            h = m(VQA, text, img, answer_ids=ans)
        else:
            h = m(direction, text, img)
        txt, im = m.split(direction, h, T)
        m.image_logits(im) if direction == T2I else m.text_logits(txt)
    assert fc.get_total_flops() == fl["forward"]["linear"]
    assert fl["train"] == 3 * fl["forward"]["total"]
    hd = m.cfg.n_embd // m.cfg.n_head
    assert fl["forward"]["attention"] == 4 * hd * m.cfg.n_head * sum(
        fl["allowed_entries_per_layer"]
    )


def test_block_activation_bytes_match_the_saved_tensors():
    """The per-position count of one block against what autograd really saves, under the
    trainer's bf16 autocast (weights' bf16 casts and the layout's arrays left out)."""
    m = _small_model()
    T, L = 9, 9 + 35
    lay = m.layouts_for(T2I, T)[0]
    x = torch.randn(2, L, m.cfg.n_embd, generator=torch.Generator().manual_seed(4))
    weights = {tuple(p.shape) for p in m.blocks[0].parameters()}
    weights |= {s[::-1] for s in weights}
    saved = {}

    def pack(t):
        # weights (autocast's bf16 casts) and the layout's int arrays are not activations
        if t.is_floating_point() and tuple(t.shape) not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m.blocks[0](x.requires_grad_(), lay, None)
    assert sum(saved.values()) == 2 * L * P.block_bytes_per_position(m.cfg)


def test_memory_scales_with_gpus_and_checkpointing_saves():
    preset = get_preset("ernie-vilg-300m")
    one = P.plan(preset, gpus=1)
    eight = P.plan(preset, gpus=8)
    n = one["params"]["generator"]["total"]
    assert one["memory"]["states"] == 16 * n
    assert eight["memory"]["states"] == pytest.approx(16 * n / 8)
    for p in (one, eight):
        mem = p["memory"]
        assert mem["activations_checkpointing"] < mem["activations_no_checkpointing"] / 4
    # 8x fewer images per GPU: the activations shrink by that much (rows round up)
    a1, a8 = (p["memory"]["activations_checkpointing"] for p in (one, eight))
    assert a8 == pytest.approx(a1 / 8, rel=0.02)
    d = one["directions"][T2I]
    assert d["dense_masked"]["train"] > d["train"]
    assert d["dense_all"]["train"] >= d["dense_masked"]["train"]
    assert one["per_image"]["mix"] == {T2I: 1.0, I2T: 1.0}  # the paper's two directions


def test_cli_plan_text_and_json(capsys):
    assert main(["plan", "--preset", "grid32-small", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "grid 32x32" in out and "FSDP full sharding over 2 GPU" in out
    assert "text2image" in out and "image2text" in out and "vqa" in out
    args = ["plan", "--preset", "grid32-small", "--json", "--set", "text_len=70"]
    assert main(args + ["--set", "generator.model.n_layer=6", "--set", "data.image_size=64"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["generator"]["text_len"] == 70
    assert doc["config"]["generator"]["n_layer"] == 6
    assert doc["directions"][I2T]["seq_len"] == 70 + 16 * 16
    g = doc["params"]["generator"]
    assert g == doc["params"]["generator_analytic"]
    assert doc["memory"]["gpus"] == 8


def test_cli_plan_rejects_an_unknown_preset(capsys):
    assert main(["plan", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
