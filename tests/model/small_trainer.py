"""A small generator trainer on a few shapes scenes, shared by the trainer tests."""

import torch

from vilg.app.model.transformer import GPTConfig, UnifiedTransformer
from vilg.app.model.vqgan import VQGAN
from vilg.app.train.stages import EndToEndTrainer, GeneratorTrainer, encode_pool
from vilg.app.train.trainer import TrainConfig


def make_small_data(tok_path=None):
    """64 train / 16 val shapes scenes at 48 px, a text tokenizer and an untrained small VQ.
    The tokenizer's training is not reproducible across processes (its vocabulary size can
    differ): processes that must agree share one through `tok_path` (trained if missing)."""
    from pathlib import Path

    from vilg.app.data.pool import shapes_pool
    from vilg.app.data.prompts import corpus_text
    from vilg.app.data.text_tokenizer import TextTokenizer
    from vilg.app.model.vqgan import VQConfig

    torch.manual_seed(0)
    train = shapes_pool("train", 64, 0, 48)
    val = shapes_pool("val", 16, 0, 48)
    if tok_path is not None and Path(tok_path).exists():
        tok = TextTokenizer.load(tok_path)
    else:
        tok = TextTokenizer.train(corpus_text(0, 200))
        if tok_path is not None:
            tok.save(tok_path)
    vq = VQGAN(VQConfig(image_size=48, patch=16, channels=(32,), codebook_size=32, code_dim=8))
    return train, val, tok, vq


def gen_trainer(data, out, end_to_end=False, dropout=None, train=None, **tasks):
    """`data` is the `small_data` fixture; end_to_end adds the z head and fine-tunes a decoder
    copy; `train` overrides TrainConfig fields, `tasks` the task mix."""
    train_pool, val, tok, vq = data
    torch.manual_seed(1)
    if dropout is None:
        dropout = 0.0 if end_to_end else 0.1
    gen = UnifiedTransformer(
        GPTConfig(
            text_vocab=tok.vocab_size,
            image_vocab=32,
            text_len=48,
            n_layer=2,
            n_head=2,
            n_embd=32,
            dropout=dropout,
            code_dim=vq.cfg.code_dim if end_to_end else 0,
        )
    )
    cfg = TrainConfig(
        **{
            "steps": 8,
            "batch_size": 6,
            "lr": 3e-3,
            "warmup": 2,
            "ckpt_every": 3,
            "progress": False,
            "weight_decay": 0.01,
            **(train or {}),
        }
    )
    codes, val_codes = encode_pool(vq, train_pool, "cpu"), encode_pool(vq, val, "cpu")
    args = (gen, cfg, out, train_pool, codes, val, val_codes, tok)
    if not end_to_end:
        return GeneratorTrainer(*args, **tasks)
    image_vq = VQGAN(vq.cfg)
    image_vq.load_state_dict(vq.state_dict())
    return EndToEndTrainer(*args, vq=image_vq, **tasks)
