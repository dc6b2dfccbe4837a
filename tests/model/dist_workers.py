"""Functions the multi-process tests run on each rank (importable by spawned processes)."""

from __future__ import annotations

import json

from small_trainer import gen_trainer, make_small_data

# the comparison recipe: no dropout (ranks draw their own dropout masks), 2 micro-batches
TRAIN = {"steps": 6, "batch_size": 6, "grad_accum": 2, "ckpt_every": 0}


def train_generator(info, tok_path, out, stop_at=None, train=None):
    """A small generator trained on this rank; rank 0 writes the per-step losses."""
    tr = gen_trainer(make_small_data(tok_path), out, dropout=0.0, train={**TRAIN, **(train or {})},
                     dist=info)  # fmt: skip
    losses = []
    tr.after_step = lambda step: losses.append(dict(tr.last_logs))
    tr.fit(stop_at=stop_at)
    if info.is_main:
        with open(f"{out}/losses-{tr.step}.json", "w") as f:
            json.dump(losses, f)


def shard_trainer(run, out, shards, dist=None, **train):
    """A small generator streamed from prepared shards; returns it and the list that
    collects the keys of the samples it takes."""
    import torch

    from vilg.app.data.text_tokenizer import TextTokenizer
    from vilg.app.model.transformer import GPTConfig, UnifiedTransformer
    from vilg.app.train.shards import ShardGeneratorTrainer, load_split
    from vilg.app.train.trainer import TrainConfig

    tok = TextTokenizer.load(run / "tokenizer.json")
    info = json.loads((shards / "prepared.json").read_text())
    torch.manual_seed(0)
    gen = UnifiedTransformer(
        GPTConfig(text_vocab=tok.vocab_size, image_vocab=info["codebook_size"], text_len=32,
                  grid=tuple(info["grid"]), n_layer=2, n_head=2, n_embd=32)
    )  # fmt: skip
    cfg = TrainConfig(**{"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup": 1, "ckpt_every": 0,
                         "progress": False, **train})  # fmt: skip
    val, val_codes = load_split(shards / "val")
    tr = ShardGeneratorTrainer(gen, cfg, out, str(shards / "train" / "*.tar"), val, val_codes,
                               tok, shuffle_buffer=4, dist=dist)  # fmt: skip
    keys = []
    take = tr._next_items
    tr._next_items = lambda: [keys.append(x["sample"]["key"]) or x for x in take()]
    return tr, keys


def train_from_shards(info, run, out, shards, stop_at=None):
    tr, keys = shard_trainer(run, out, shards, dist=info)
    tr.fit(stop_at=stop_at)
    with open(f"{out}/keys-{info.rank}.json", "w") as f:
        json.dump(keys, f)
