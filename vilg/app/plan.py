"""Sizing a preset before training it: parameters, FLOPs, activation and per-GPU memory.

`plan(preset, gpus)` builds the preset's generator and image tokenizer on the meta device
(shapes only, no memory, no data) exactly as `vilg train` would (vilg.app.train.run) and returns a
plain dict; `vilg plan` prints it. Every figure is an analytic estimate under the conventions
below, not a measurement.

FLOPs (2 per multiply-add), for one sequence of a direction at its longest text:
  linear     2 x in x out per position for every linear layer the position runs through: the
             blocks on every position, the output head only where there is a target (image
             positions in text2image, text positions in image2text, the answer in vqa)
  attention  4 x head_dim per allowed (query, key) entry and head (QK^T and PV), the entries
             counted from each layer's real `Layout` by vilg.profile.measure.attention_entries
  training   3 x forward (backward = twice the forward). The sparse kernels also recompute
             QK^T in the backward: 14/4 of the forward attention work, not 3 (reported apart)
  left out   softmax, LayerNorm, GELU, embeddings and the loss (well under 1% here)

Activations saved for backward, bytes per position of one block, as the trainer runs it
(bf16 autocast; LayerNorm runs in fp32 under autocast, so it keeps an fp32 copy of its input):
  LN1 input fp32 4d + mean/rstd 8 | qkv input bf16 2d | q, k, v (views of the qkv output) 6d |
  attention output 2d (the kernel writes it in [B, L, heads, head_dim] order, so the proj input
  is the same storage) and its logsumexp fp32 4 x heads | LN2 input fp32 4d + 8 | fc1 input 2d
  | GELU input 8d | fc2 input 8d | dropout masks 1 byte x 2d when dropout > 0
  = 36d + 4 x heads + 16 (tests/model/test_plan.py measures it with saved-tensor hooks).
  The block-sparse kernels keep no L x L matrix. Autocast's bf16 copies of the weights are
  parameters, not activations (under FSDP they are the gathered blocks of the working set).
Outside the blocks: ln_f's fp32 input on every position, the head's bf16 input, and per
target position the bf16 logits (the trainer keeps them for its logs) and the fp32
log-softmax cross_entropy saves: 6 bytes x vocabulary.
With activation checkpointing (one checkpoint per block) a block keeps only its input (2d,
bf16 under FSDP's bf16 parameters), and its backward recomputes one block at a time.
A training image runs its streams (text2image, captions, VQA rows in the preset's task mix)
as separate forwards before one backward, so their activations add up.

Memory per GPU under FSDP2 full sharding (vilg.app.train.distributed: fp32 sharded parameters,
bf16 compute, fp32 gradient reduction): parameters, gradients and Adam's two moments, all fp32,
16 bytes per parameter / N; plus the working set of bf16 copies of the root unit (embeddings,
ln_f, heads) and two blocks (current + prefetched), and one unit's unsharded gradient in bf16
and fp32; plus activations for batch_size / N images (the preset's batch_size is one micro-
batch of the global batch; each stream's rows are split over the ranks).
"""

from __future__ import annotations

import math

import torch

from vilg.app.model.transformer import DIRS, I2T, T2I, VQA, GPTConfig, UnifiedTransformer
from vilg.app.model.vqgan import VQGAN
from vilg.app.train.recipe import generator_config, vq_config
from vilg.layouts import ernie_vilg
from vilg.profile.measure import ATTN_FLOPS_PER_ENTRY, DATASHEET, attention_entries

GIB = 1024**3
# the GeneratorTrainer's default task mix: rows per stream per image of the batch
DEFAULT_FRACS = {"t2i_frac": 1.0, "cap_frac": 0.5, "vqa_frac": 0.5}
STREAM_OF = {T2I: "t2i_frac", I2T: "cap_frac", VQA: "vqa_frac"}
# vilg.app.train.run picks 1000 for the built-in data when a preset does not say; the demo's
# captions fit in 48 tokens (GPTConfig's default)
DEFAULT_TEXT_VOCAB, DEFAULT_TEXT_LEN = 1000, 48


# ---- parameters ------------------------------------------------------------------------------
def generator_params(cfg: GPTConfig) -> dict:
    """Parameter counts of UnifiedTransformer(cfg), from the config alone."""
    d, (H, W) = cfg.n_embd, cfg.grid
    block = 12 * d * d + 13 * d  # qkv + proj + fc1 + fc2 weights and biases, two LayerNorms
    heads = cfg.text_vocab * d + cfg.image_vocab * d
    if cfg.code_dim > 0:
        heads += d * d + d + d * cfg.code_dim + cfg.code_dim
    out = {
        "embeddings": d * (cfg.text_vocab + cfg.text_len + cfg.image_vocab + 1 + H + W + len(DIRS)),
        "blocks": cfg.n_layer * block,
        "final_norm": 2 * d,
        "heads": heads,
    }
    out["total"] = sum(out.values())
    return out


def _group(name: str) -> str:
    if name.startswith("blocks."):
        return "blocks"
    if name.startswith("ln_f."):
        return "final_norm"
    if name.startswith(("text_head", "image_head", "z_head")):
        return "heads"
    return "embeddings"


def counted_params(model: torch.nn.Module, group=_group) -> dict:
    """sum(p.numel()) of a (meta) model, by group."""
    out: dict = {}
    for n, p in model.named_parameters():
        g = group(n)
        out[g] = out.get(g, 0) + p.numel()
    out["total"] = sum(out.values())
    return out


def _vq_group(name: str) -> str:
    return name.split(".")[0]  # encoder, quantizer, decoder, features, disc


def build_meta(preset: dict) -> tuple[UnifiedTransformer, VQGAN]:
    """The preset's generator and image tokenizer with meta tensors (no storage)."""
    vq_cfg = vq_config(preset)
    cfg = generator_config(
        preset,
        vq_cfg,
        preset.get("text_vocab", DEFAULT_TEXT_VOCAB),
        preset.get("text_len", DEFAULT_TEXT_LEN),
    )
    with torch.device("meta"):
        return UnifiedTransformer(cfg), VQGAN(vq_cfg)


# ---- FLOPs -----------------------------------------------------------------------------------
def segments(cfg: GPTConfig, direction: str, answer_len: int) -> dict:
    """Text lengths of one sequence at its longest: (text, answer, targets, head vocab)."""
    T, N = cfg.text_len, cfg.n_image
    if direction == T2I:
        return {"text": T, "answer": 0, "targets": N, "vocab": cfg.image_vocab}
    if direction == I2T:
        return {"text": T, "answer": 0, "targets": T, "vocab": cfg.text_vocab}
    A = min(answer_len, T - 1)
    return {"text": T - A, "answer": A, "targets": A, "vocab": cfg.text_vocab}


def attention_per_layer(model: UnifiedTransformer, direction: str, seg: dict, cache: dict):
    """Allowed (query, key) entries of every layer under the model's schedule, and of the
    same direction's mask with a full image pattern (dense masked attention)."""
    cfg = model.cfg

    def entries(kind):
        key = (kind, direction, seg["text"], seg["answer"])
        if key not in cache:
            lay = ernie_vilg(
                kind,
                seg["text"],
                cfg.grid,
                direction=direction,
                window=cfg.window,
                answer_len=seg["answer"],
            )
            cache[key] = attention_entries(lay)["useful_per_batch"]
        return cache[key]

    return {"sparse": [entries(k) for k in model.kinds], "full": entries("full")}


def direction_flops(model: UnifiedTransformer, direction: str, answer_len: int, cache: dict):
    cfg = model.cfg
    d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    seg = segments(cfg, direction, answer_len)
    L = seg["text"] + cfg.n_image + seg["answer"]
    block_linear = sum(
        m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)
    )
    linear = 2 * L * block_linear + 2 * seg["targets"] * d * seg["vocab"]
    if direction == T2I and model.z_head is not None:  # end-to-end: z_emb of every image position
        linear += (
            2
            * cfg.n_image
            * sum(
                m.weight.numel() for m in model.z_head.modules() if isinstance(m, torch.nn.Linear)
            )
        )
    ent = attention_per_layer(model, direction, seg, cache)
    per_entry = ATTN_FLOPS_PER_ENTRY["fwd"] * hd * cfg.n_head
    attn = per_entry * sum(ent["sparse"])
    full = per_entry * ent["full"] * cfg.n_layer
    square = per_entry * L * L * cfg.n_layer
    return {
        "seq_len": L,
        "text_len": seg["text"],
        "answer_len": seg["answer"],
        "target_positions": seg["targets"],
        "head_vocab": seg["vocab"],
        "allowed_entries_per_layer": ent["sparse"],
        "allowed_fraction": sum(ent["sparse"]) / (cfg.n_layer * L * L),
        "forward": {"linear": linear, "attention": attn, "total": linear + attn},
        "train": 3 * (linear + attn),
        # the kernels' own backward recomputes QK^T: 14/4 of the forward attention
        "train_kernel_attention": ATTN_FLOPS_PER_ENTRY["fwdbwd"]
        * hd
        * cfg.n_head
        * sum(ent["sparse"]),
        "dense_masked": {
            "attention_entries_per_layer": ent["full"],
            "forward_attention": full,
            "train": 3 * (linear + full),
        },
        "dense_all": {"forward_attention": square, "train": 3 * (linear + square)},
    }


# ---- activations -----------------------------------------------------------------------------
def block_bytes_per_position(cfg: GPTConfig) -> int:
    d = cfg.n_embd
    out = 36 * d + 4 * cfg.n_head + 16
    if cfg.dropout > 0:
        out += 2 * d
    return out


def direction_activations(cfg: GPTConfig, fl: dict) -> dict:
    L, d, n, vocab = fl["seq_len"], cfg.n_embd, fl["target_positions"], fl["head_vocab"]
    one_block = L * block_bytes_per_position(cfg)
    outside = L * (4 * d + 8) + n * 2 * d + n * 6 * vocab
    if cfg.dropout > 0:
        outside += L * d  # embedding dropout mask
    return {
        "block": one_block,
        "outside_blocks": outside,
        "no_checkpointing": cfg.n_layer * one_block + outside,
        "checkpointing": cfg.n_layer * L * 2 * d + one_block + outside,
        "checkpointing_stored": cfg.n_layer * L * 2 * d + outside,
    }


# ---- the plan --------------------------------------------------------------------------------
def task_fracs(preset: dict) -> dict:
    """Rows per stream per image: the preset's first mix (a later `schedule` entry changes it;
    on user data, which has no questions, the trainer turns VQA rows into caption rows)."""
    tasks = preset["generator"].get("tasks", {})
    return {k: float(tasks.get(k, v)) for k, v in DEFAULT_FRACS.items()}


def fsdp_memory(params: dict, per_block: int, acts: dict, gpus: int, batch: int, fr) -> dict:
    root = params["total"] - params["blocks"]
    states = 16 * params["total"] / gpus
    working = 2 * (root + 2 * per_block) + 6 * max(root, per_block)
    rows = {d: math.ceil(batch * f / gpus) for d, f in fr.items()}
    out = {"states": states, "working_set": working, "images_per_gpu": batch / gpus}
    for mode in ("no_checkpointing", "checkpointing"):
        out[f"activations_{mode}"] = _stream_sum(acts, rows, mode)
        out[f"total_{mode}"] = states + working + out[f"activations_{mode}"]
    return out


def _stream_sum(acts: dict, rows: dict, mode: str) -> float:
    """Activations of `rows[d]` sequences of each direction d, all live before one backward;
    under checkpointing only one block of one stream is recomputed at a time."""
    if mode == "no_checkpointing":
        return sum(rows[d] * acts[d]["no_checkpointing"] for d in rows)
    stored = sum(rows[d] * acts[d]["checkpointing_stored"] for d in rows)
    return stored + max((rows[d] * acts[d]["block"] for d in rows), default=0)


def plan(
    preset: dict, gpus: int = 8, answer_len: int = 8, gpu_mem_gib: float = 80.0, mfu: float = 0.4
) -> dict:
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    gen, vq = build_meta(preset)
    cfg = gen.cfg
    params = counted_params(gen)
    analytic = generator_params(cfg)
    fr = task_fracs(preset)
    streams = {d: fr[STREAM_OF[d]] for d in DIRS if fr[STREAM_OF[d]] > 0}
    cache: dict = {}
    per_dir, acts = {}, {}
    for d in DIRS:
        per_dir[d] = direction_flops(gen, d, answer_len, cache)
        acts[d] = direction_activations(cfg, per_dir[d])
        per_dir[d]["activations_bytes"] = acts[d]
    per_image = {
        "mix": streams,
        "train_flops": sum(f * per_dir[d]["train"] for d, f in streams.items()),
        "train_flops_dense_masked": sum(
            f * per_dir[d]["dense_masked"]["train"] for d, f in streams.items()
        ),
        "activations_no_checkpointing": _stream_sum(acts, streams, "no_checkpointing"),
        "activations_checkpointing": _stream_sum(acts, streams, "checkpointing"),
    }
    train = preset["generator"]["train"]
    batch = int(train.get("batch_size", 32)) * int(train.get("grad_accum", 1))
    micro = int(train.get("batch_size", 32))
    per_block = params["blocks"] // cfg.n_layer
    mem = fsdp_memory(params, per_block, acts, gpus, micro, streams)
    ckpt = bool(train.get("grad_checkpointing", False))
    budget = gpu_mem_gib * GIB - mem["states"] - mem["working_set"]
    mode = "checkpointing" if ckpt else "no_checkpointing"
    per_img = per_image[f"activations_{mode}"]
    peak = DATASHEET["H100"]["bf16_tflops"] * 1e12
    step_flops = per_image["train_flops"] * batch
    unset = [k for k in ("text_vocab", "text_len") if k not in preset]
    return {
        "preset": preset.get("name"),
        # vilg train takes these from the data when the preset leaves them out
        "assumed": (
            f" ({' and '.join(unset)}: defaults; vilg train takes them from the data)"
            if unset
            else ""
        ),
        "config": {"generator": cfg.to_dict(), "tokenizer": vq.cfg.to_dict()},
        "params": {
            "generator": params,
            "generator_analytic": analytic,
            "tokenizer": counted_params(vq, _vq_group),
        },
        "directions": per_dir,
        "per_image": per_image,
        "memory": {
            "gpus": gpus,
            "micro_batch_images": micro,
            "grad_checkpointing": ckpt,
            "gpu_mem_gib": gpu_mem_gib,
            **mem,
            "fits": mem[f"total_{mode}"] <= gpu_mem_gib * GIB,
            # an estimate from per-image activations; 0 when the states alone do not fit
            "max_images_per_gpu": max(0, int(budget // per_img)),
        },
        "step": {
            "images": batch,
            "train_flops": step_flops,
            "seconds_at_mfu": step_flops / (gpus * peak * mfu),
            "mfu": mfu,
            "peak": "H100 bf16 dense datasheet, 989 TFLOP/s per GPU",
        },
    }


# ---- text ------------------------------------------------------------------------------------
def _n(x: float) -> str:
    for unit, v in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= v:
            return f"{x / v:.2f}{unit}"
    return f"{x:.0f}"


def _gib(x: float) -> str:
    if x >= GIB:
        return f"{x / GIB:.2f} GiB"
    return f"{x / 2**20:.1f} MiB"


def format_plan(p: dict) -> str:
    g, t = p["params"]["generator"], p["params"]["tokenizer"]
    c = p["config"]["generator"]
    v = p["config"]["tokenizer"]
    lines = [
        f"preset {p['preset']}: generator {c['n_layer']} layers x {c['n_embd']} hidden x "
        f"{c['n_head']} heads, grid {c['grid'][0]}x{c['grid'][1]}, {c['image_vocab']} codes, "
        f"text vocab {c['text_vocab']}, text_len {c['text_len']}{p['assumed']}; tokenizer f = "
        f"{v['patch'] * 2 ** (len(v['channels']) - 1)} at {v['image_size']} px",
        "",
        f"parameters  generator {_n(g['total'])} = blocks {_n(g['blocks'])} "
        f"({c['n_layer']} x (12 d^2 + 13 d)) + embeddings "
        f"{_n(g['embeddings'])} + heads {_n(g['heads'])} + final norm {_n(g['final_norm'])}",
        "            tokenizer "
        + _n(t["total"])
        + " ("
        + ", ".join(f"{k} {_n(n)}" for k, n in t.items() if k != "total")
        + ")",
        "",
        "FLOP per sequence (train = 3 x forward; dense = the same mask with a full image "
        "pattern / every entry of L x L)",
    ]
    for d, f in p["directions"].items():
        seg = f"text {f['text_len']}" + (f" + answer {f['answer_len']}" if f["answer_len"] else "")
        lines.append(
            f"  {d:<10} L={f['seq_len']:<5} ({seg}): forward {_n(f['forward']['total'])} "
            f"(linear {_n(f['forward']['linear'])}, attention {_n(f['forward']['attention'])}, "
            f"{100 * f['allowed_fraction']:.1f}% of L x L); train {_n(f['train'])}; dense "
            f"{_n(f['dense_masked']['train'])} / {_n(f['dense_all']['train'])}"
        )
    i = p["per_image"]
    mix = ", ".join(f"{d} x{f:g}" for d, f in i["mix"].items())
    lines += [
        f"  per training image ({mix}): train {_n(i['train_flops'])}, dense masked "
        f"{_n(i['train_flops_dense_masked'])}",
        "",
        "activations per sequence (bf16 autocast; see vilg/app/plan.py for what is counted)",
    ]
    for d, f in p["directions"].items():
        a = f["activations_bytes"]
        lines.append(
            f"  {d:<10} {_gib(a['no_checkpointing'])} without checkpointing, "
            f"{_gib(a['checkpointing'])} with (one block {_gib(a['block'])})"
        )
    lines.append(
        f"  per training image: {_gib(i['activations_no_checkpointing'])} without, "
        f"{_gib(i['activations_checkpointing'])} with checkpointing"
    )
    m = p["memory"]
    on = "on" if m["grad_checkpointing"] else "off"
    mode = "checkpointing" if m["grad_checkpointing"] else "no_checkpointing"
    lines += [
        "",
        f"memory per GPU, FSDP full sharding over {m['gpus']} GPU(s), micro-batch "
        f"{m['micro_batch_images']} images ({m['images_per_gpu']:g} per GPU), checkpointing {on}",
        f"  fp32 params + grads + Adam (16 B/param / {m['gpus']}) {_gib(m['states'])}, "
        f"working set {_gib(m['working_set'])}, activations {_gib(m['activations_' + mode])}"
        f" -> {_gib(m['total_' + mode])}"
        f" (without checkpointing: {_gib(m['total_no_checkpointing'])},"
        f" with: {_gib(m['total_checkpointing'])})",
        f"  {'fits' if m['fits'] else 'does NOT fit'} in {m['gpu_mem_gib']:g} GiB; at most "
        f"~{m['max_images_per_gpu']} images per GPU",
        "",
        f"one step of {p['step']['images']} images: {_n(p['step']['train_flops'])} FLOP, "
        f"{p['step']['seconds_at_mfu']:.3g} s on {m['gpus']} GPU(s) at "
        f"{100 * p['step']['mfu']:.0f}% MFU ({p['step']['peak']})",
    ]
    return "\n".join(lines)
