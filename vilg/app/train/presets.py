"""Named training recipes. A preset is a plain dict of per-stage settings; `vilg train
--preset NAME --set stage.key=value` overrides single entries.

The demo / long shapes presets use a token grid aligned with the 3x3 cell grid
(f = image_size / 3) and a per-patch tokenizer (token_kernel=1): a token then stands for one
cell's content, which makes both directions short (9 image tokens) and fast to learn.
`shapes16` draws every object from many codes of a 16x16 grid instead (see its comment).
"""

from __future__ import annotations

import copy

PRESETS: dict[str, dict] = {
    # seconds on 1 core: used by the test-suite
    "tiny": {
        "data": {"train_size": 512, "val_size": 64, "image_size": 48},
        "vq": {
            "model": {
                "patch": 16,
                "channels": [64],
                "blocks": 1,
                "codebook_size": 80,
                "code_dim": 16,
            },
            "train": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup": 5},
        },
        "matcher": {
            "model": {"dim": 32, "embed_dim": 32, "text_layers": 1},
            "train": {"steps": 10, "batch_size": 16, "lr": 2e-3, "warmup": 2},
        },
        "generator": {
            "model": {"n_layer": 2, "n_head": 2, "n_embd": 32},
            "train": {"steps": 10, "batch_size": 8, "lr": 2e-3, "warmup": 2},
        },
    },
    # the demo: sized to train every stage on two CPU cores in minutes (its measured time and
    # figures: docs/model-results.md)
    "demo": {
        "data": {
            "train_size": 20000,
            "val_size": 256,
            "image_size": 48,
            # P(1, 2, 3 objects) of the training scenes (the benchmark draws 0.4 / 0.4 / 0.2).
            # With the benchmark's mix nearly every caption and VQA error was on 3-object
            # scenes (exact captions 60-73% there, "where" 23-64%; now 75-97%), see
            # docs/model-results.md
            "train_count_probs": [0.25, 0.35, 0.4],
        },
        "vq": {
            "model": {
                "patch": 16,
                "channels": [256],
                "blocks": 2,
                "codebook_size": 128,
                "code_dim": 32,
            },
            "train": {"steps": 1800, "batch_size": 32, "lr": 3e-3, "warmup": 20},
        },
        "matcher": {
            "model": {"dim": 64, "embed_dim": 64, "text_layers": 2},
            "train": {"steps": 400, "batch_size": 64, "lr": 2e-3, "warmup": 20},
        },
        "generator": {
            # 8 heads of 8: "where is the red circle" / "is there a ..." need a head that
            # matches question words against image content; with 4 heads that circuit often
            # failed to form ("where" at chance among the objects). 8 heads, 5000 steps and the
            # object counts / question weights here are what kept every seed's captions and
            # VQA above 90% (docs/model-results.md)
            "model": {"n_layer": 4, "n_head": 8, "n_embd": 64},
            "train": {
                "steps": 5000,
                "batch_size": 32,
                "lr": 2e-3,
                "warmup": 50,
                "weight_decay": 0.01,
            },
            # captions and text->image are learnt first; from a quarter of the way on, the
            # batch turns to VQA (64 question rows) with half the t2i rows kept as rehearsal.
            # Measured on one image tokenizer: VQA 92/94% en/zh against 77-86% with the
            # constant mix, exact captions 89.5/90% against 88-96% (see docs/model-results.md
            # for the run-to-run spread and the variants tried)
            # "where" and "is there" need the model to find an object by colour and shape,
            # the slowest lookup to form (with the counts above alone, "is there" stayed near
            # chance in two of five runs); count is learnt almost at once
            "tasks": {
                "schedule": [[0.25, [0.5, 0.5, 2.0]]],
                "kind_weights": {"color": 1, "shape": 1, "count": 0.5, "where": 2, "exists": 2},
            },
        },
    },
    # user images (folder / tar shards): conv tokenizer, 8x8 token grid at 64 px
    "real": {
        "data": {"train_size": 100000, "val_size": 256, "image_size": 64},
        "vq": {
            "model": {
                "patch": 2,
                "channels": [64, 128, 256],
                "token_kernel": 3,
                "codebook_size": 1024,
                "code_dim": 32,
                "perceptual_weight": 0.1,
            },
            "train": {"steps": 20000, "batch_size": 32, "lr": 1e-3, "warmup": 500},
        },
        "matcher": {
            "model": {"dim": 128, "embed_dim": 128, "text_layers": 4},
            "train": {"steps": 10000, "batch_size": 128, "lr": 5e-4, "warmup": 500},
        },
        "generator": {
            "model": {"n_layer": 12, "n_head": 8, "n_embd": 512, "dropout": 0.1},
            "train": {
                "steps": 100000,
                "batch_size": 64,
                "lr": 3e-4,
                "warmup": 2000,
                "weight_decay": 0.05,
                "precision": "auto",  # bf16 / fp16 autocast on GPU, fp32 on CPU
                "grad_checkpointing": True,
            },
        },
    },
}


def _merged(base: dict, changes: dict) -> dict:
    """A deep copy of `base` with the (nested) entries of `changes` replaced."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and k in out else v
    return out


# the longer recipe: the demo's architecture and task mix, more scenes, 7000 generator steps
# (docs/model-results.md)
PRESETS["long"] = _merged(
    PRESETS["demo"],
    {
        "data": {"train_size": 50000},
        "vq": {"train": {"steps": 2000}},
        "matcher": {"train": {"steps": 1000}},
        "generator": {"train": {"steps": 7000, "warmup": 100}},
    },
)


# ---- ERNIE-ViLG at its real shape: a 32x32 grid of 8192 codes from 256 px images (f = 8)
#
# The paper gives the generator (48 layers, hidden 4096, 64 heads; the 300M end-to-end study:
# 24 / 1024 / 16) and the tokenizer's f, codebook and image size. It does not give the text
# vocabulary, the text length or the batch; the values below are assumptions, chosen so that
# `vilg plan` can size a run: a Chinese WordPiece vocabulary of 18000 (ERNIE 1.0's is about
# that size), 64 text tokens (captions are short; the sequence is then 64 + 1024 = 1088) and
# 256 image-text pairs per step, each trained in both directions as in the paper
# (t2i_frac = cap_frac = 1; VQA is a fine-tuning task there).
_PAPER_VQ = {
    # VQGAN-like conv trunk at full resolution: 4 levels (3 halvings) give f = 1 * 2**3 = 8,
    # 256 px -> 32 x 32 tokens; adversarial + perceptual terms as in VQGAN
    "model": {
        "patch": 1,
        "channels": [128, 128, 256, 512],
        "token_kernel": 3,
        "blocks": 2,
        "codebook_size": 8192,
        "code_dim": 256,
        "perceptual_weight": 0.1,
        "gan_weight": 0.1,
        "gan_start": 10000,
    },
    "train": {"steps": 200000, "batch_size": 64, "lr": 2e-4, "warmup": 2000},
}


def _paper(n_layer: int, n_head: int, n_embd: int, lr: float) -> dict:
    return {
        "data": {"train_size": 1_000_000, "val_size": 1024, "image_size": 256},
        "text_vocab": 18000,
        "text_len": 64,
        "vq": copy.deepcopy(_PAPER_VQ),
        "matcher": {
            "model": {"dim": 256, "embed_dim": 256, "text_layers": 6},
            "train": {"steps": 50000, "batch_size": 512, "lr": 5e-4, "warmup": 1000},
        },
        "generator": {
            "model": {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd},
            "train": {
                "steps": 300000,
                "batch_size": 256,
                "lr": lr,
                "warmup": 5000,
                "weight_decay": 0.01,
                "precision": "auto",
                "grad_checkpointing": True,
            },
            "tasks": {"t2i_frac": 1.0, "cap_frac": 1.0, "vqa_frac": 0.0},
        },
    }


PRESETS["ernie-vilg-10b"] = _paper(48, 64, 4096, 1e-4)
PRESETS["ernie-vilg-300m"] = _paper(24, 16, 1024, 3e-4)

# The paper's 32 x 32 token grid at a width this CPU trains in minutes: every layer kind of the
# ERNIE-ViLG schedule (row, row, column, conv) runs its real multi-tile layout (1024 image
# tokens + text = 17+ tiles of 64 per side). 128 px through a conv trunk with f = 4 (a 2 x 2
# pixel-unshuffle stem, then one halving)
PRESETS["grid32-small"] = {
    "data": {"train_size": 1000, "val_size": 64, "image_size": 128},
    "vq": {
        "model": {
            "patch": 2,
            "channels": [16, 32],
            "token_kernel": 3,
            "blocks": 1,
            "codebook_size": 256,
            "code_dim": 16,
        },
        "train": {"steps": 150, "batch_size": 8, "lr": 3e-3, "warmup": 10},
    },
    "matcher": {
        "model": {"dim": 32, "embed_dim": 32, "text_layers": 1},
        "train": {"steps": 50, "batch_size": 32, "lr": 2e-3, "warmup": 5},
    },
    "generator": {
        # a step of 4 images (4 text->image, 2 caption and 2 VQA rows of ~1070 tokens): the
        # smallest batch that holds every task; the step's cost grows with batch and width
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 64},
        "train": {"steps": 300, "batch_size": 4, "lr": 2e-3, "warmup": 20},
    },
}


# a 16x16 token grid (f = 3 at 48 px): a cell is 5.3 tokens wide (16 cannot be split into 3
# equal parts, so the three columns / rows of cells sit at three phases of the token grid), an
# object is drawn from 4-25 codes, and a generator sequence (text + 256 image tokens) spans five
# 64-token tiles. Per-patch tokenizer (3x3-pixel patches, token_kernel=1) with a small trunk:
# the data holds ~540 distinct patches; the trunk and steps are what fit the time budget.
# The generator is under-trained at 1200 steps (more steps kept improving it); no caption or
# VQA rows. Measured time and accuracy: bench/results/shapes16-cpu-2026-11-30.json,
# docs/model-results.md
PRESETS["shapes16"] = {
    "data": {
        "train_size": 20000,
        "val_size": 256,
        "image_size": 48,
        "train_count_probs": [0.25, 0.35, 0.4],
    },
    "vq": {
        "model": {
            "patch": 3,
            "channels": [64],
            "blocks": 1,
            "codebook_size": 640,
            "code_dim": 32,
        },
        "train": {"steps": 800, "batch_size": 32, "lr": 3e-3, "warmup": 20},
    },
    "matcher": {
        "model": {"dim": 64, "embed_dim": 64, "text_layers": 2},
        "train": {"steps": 400, "batch_size": 64, "lr": 2e-3, "warmup": 20},
    },
    "generator": {
        "model": {"n_layer": 4, "n_head": 8, "n_embd": 64},
        "train": {
            "steps": 1200,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup": 50,
            "weight_decay": 0.01,
            "eval_every": 200,
        },
        # text->image rows only: in the time budget every step goes to the target task
        "tasks": {"t2i_frac": 1.0, "cap_frac": 0.0, "vqa_frac": 0.0},
    },
}


def get_preset(name: str, overrides: list[str] | None = None) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    p = copy.deepcopy(PRESETS[name])
    p["name"] = name
    for ov in overrides or []:
        key, sep, val = ov.partition("=")
        if not sep:
            raise ValueError(f"override {ov!r} is not of the form stage.key=value")
        parts = key.split(".")
        d = p
        for k in parts[:-1]:
            d = d.setdefault(k, {})
        d[parts[-1]] = _parse(val)
    return p


def _parse(v: str):
    import json

    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v
