"""Every preset resolves; the shapes16 recipe builds, trains a few steps at reduced size and
generates on its 16x16 grid (its layouts span several 64-token tiles)."""

import numpy as np
import pytest
import torch

from vilg.app.model.vqgan import VQConfig
from vilg.app.train.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_resolve(name):
    p = get_preset(name)
    cfg = VQConfig(image_size=p["data"]["image_size"], **p["vq"]["model"])
    assert cfg.grid[0] * cfg.f == p["data"]["image_size"]
    if name != "real":  # user images; every other preset can train on the shapes scenes
        from vilg.app.data.shapes import random_scene, render

        side = p["data"]["image_size"]  # 32x32 grids (128, 256 px) put cells off the pixel grid
        assert render(random_scene(np.random.default_rng(0)), side).shape == (side, side, 3)


def test_shapes16_grid_spans_several_tiles():
    from vilg.layouts import ernie_vilg

    p = get_preset("shapes16")
    cfg = VQConfig(image_size=p["data"]["image_size"], **p["vq"]["model"])
    assert cfg.grid == (16, 16)
    lay = ernie_vilg("row", text_len=40, grid=cfg.grid, direction="text2image")
    assert lay.seq_len == 40 + 256
    assert -(-lay.seq_len // 64) >= 5  # five query tiles


def test_shapes16_trains_and_generates_at_reduced_size(tmp_path):
    from vilg.app.generate import Pipeline
    from vilg.app.train.run import train_run

    p = get_preset(
        "shapes16",
        [
            "data.train_size=48",
            "data.val_size=8",
            "vq.model.codebook_size=32",
            "vq.train.steps=3",
            "vq.train.batch_size=8",
            "matcher.train.steps=2",
            "matcher.train.batch_size=8",
            "generator.model.n_embd=32",
            "generator.model.n_layer=2",
            "generator.train.steps=3",
            "generator.train.batch_size=4",
        ],
    )
    t = train_run(p, tmp_path, progress=False, log=lambda *a: None)
    assert {"image_tokenizer", "matcher", "generator"} <= set(t)
    pipe = Pipeline.load(tmp_path)
    assert pipe.gen.cfg.grid == (16, 16)
    out = pipe.generate(["a large red circle at the top left"], n=2, seed=0)
    assert out["images"].shape == (1, 2, 3, 48, 48)
    assert out["codes"].shape == (1, 2, 256)
    live = pipe.vq.quantizer.live
    assert bool(live[out["codes"].flatten()].all())  # only codes the tokenizer emits
    cap = pipe.caption(torch.as_tensor(np.zeros((1, 3, 48, 48), np.float32)), lang="en")
    assert len(cap) == 1
