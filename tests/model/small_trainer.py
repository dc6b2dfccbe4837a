"""A small generator trainer on a few shapes scenes, shared by the trainer tests."""

import torch

from vilg.model.transformer import GPTConfig, UnifiedTransformer
from vilg.model.vqgan import VQGAN
from vilg.train.stages import EndToEndTrainer, GeneratorTrainer, encode_pool
from vilg.train.trainer import TrainConfig


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
