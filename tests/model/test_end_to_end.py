import json

import pytest
import torch

from vilg.app.generate import Pipeline
from vilg.app.train.checkpoint import CheckpointError
from vilg.app.train.presets import get_preset
from vilg.app.train.run import train_config, train_run


def test_end_to_end_stage_trains_and_generates(tmp_path):
    preset = get_preset("tiny", ["generator.train.steps=4"])
    train_run(preset, tmp_path, stages=("vq", "generator"), progress=False, log=lambda *a: None)
    # end2end added to the finished run later, with settings of its own
    preset = get_preset("tiny", ["generator.train.steps=4", "end2end.train.steps=3"])
    train_run(preset, tmp_path, stages=("end2end",), progress=False, log=lambda *a: None)
    assert (tmp_path / "end2end" / "decoder.safetensors").exists()
    hist = [
        json.loads(line) for line in (tmp_path / "end2end" / "eval.jsonl").read_text().splitlines()
    ]
    assert hist and hist[-1]["step"] == 3
    pipe = Pipeline.load(tmp_path, end_to_end=True)
    assert pipe.end_to_end and pipe.gen.z_head is not None
    out = pipe.generate(["a small red circle at the center"], n=2, seed=1)
    assert out["images"].shape == (1, 2, 3, 48, 48)
    assert torch.isfinite(out["images"]).all()
    two_stage = Pipeline.load(tmp_path, end_to_end=False)
    assert not two_stage.end_to_end


def test_end_to_end_reconstruction_gradient_reaches_generator():
    from vilg.app.model.transformer import GPTConfig, UnifiedTransformer
    from vilg.app.model.vqgan import VQGAN, VQConfig

    torch.manual_seed(0)
    vq = VQGAN(VQConfig(image_size=48, patch=16, channels=(16,), codebook_size=8, code_dim=4))
    gen = UnifiedTransformer(
        GPTConfig(
            text_vocab=20, image_vocab=8, text_len=6, n_layer=2, n_head=2, n_embd=16, code_dim=4
        )
    )
    text = torch.randint(5, 20, (2, 5))
    h = gen("text2image", text, torch.randint(0, 8, (2, 9)))
    z = gen.z_head(h[:, 5:]).transpose(1, 2).reshape(2, 4, 3, 3)
    loss = (vq.decoder(z) - torch.rand(2, 3, 48, 48)).pow(2).mean()
    loss.backward()
    assert gen.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert gen.text_emb.weight.grad.abs().sum() > 0


def test_end2end_fine_tunes_with_the_generator_recipe_and_its_own_overrides():
    p = get_preset("demo", ["end2end.train.steps=300", "end2end.train.lr=5e-4"])
    e2e, gen = train_config(p, "end2end", 0), train_config(p, "generator", 0)
    recipe = p["generator"]["train"]
    assert (e2e.steps, e2e.lr) == (300, 5e-4)
    assert (gen.steps, gen.lr) == (recipe["steps"], recipe["lr"]) != (300, 5e-4)
    assert e2e.batch_size == gen.batch_size == recipe["batch_size"]
    assert e2e.weight_decay == gen.weight_decay == recipe["weight_decay"]


def test_a_run_refuses_a_changed_recipe(tmp_path):
    quiet = {"progress": False, "log": lambda *a: None}
    train_run(get_preset("tiny", ["vq.train.steps=2"]), tmp_path, stages=("vq",), **quiet)
    with pytest.raises(CheckpointError, match="different recipe"):
        train_run(get_preset("tiny", ["vq.train.steps=3"]), tmp_path, stages=("vq",), **quiet)
