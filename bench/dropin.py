"""Whole transformers models on vilg attention vs the same model on masked SDPA and on
FlexAttention (compiled), one process, forward and forward+backward.

Models are built from configs (random weights):
  llama: Mistral-style causal LM (Llama blocks + sliding window), hidden 512, 8 heads, 2 kv
         heads, 4 layers, seq 4096, window 512; sdpa gets transformers' own sliding mask.
  vit:   ViT, hidden 384, 6 heads, 4 layers, 64x64 patch grid (+ CLS), 7x7 neighbourhood;
         sdpa gets the same layout as a dense boolean mask (ViT itself has no mask).
  flashapi: a decoder-only LM written against flash-attn's API (each block calls
         flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0)) on [B, L, heads,
         D] tensors), switched to vilg by handing it vilg.flash_attn.flash_attn_func; the
         baseline is the same call answered by SDPA with the dense mask (flash-attn itself
         has no CPU build). Same sizes as llama.
  gemma: Gemma 2 (attention logits soft-capped at 50, every layer a sliding window); needs
         vilg's score modifiers (skipped without them). Baselines: transformers' eager
         attention (the model's own soft-capped path; SDPA cannot soft-cap) and SDPA with the
         window mask but *without* the cap (not the same model: a speed reference only).
Also times the layout build and the first vilg call with nothing warm, the model with no
attention at all (zeros: the floor, so sdpa / none is the best end-to-end ratio any attention
could reach), and the attention op alone at the same shapes. Implementations are timed in
interleaved rounds (medians), since a shared machine's load drifts. Ratios are printed and
saved under bench/results/. On a shared CPU, pin OMP_NUM_THREADS (bench/common.py).

    OMP_NUM_THREADS=2 python bench/dropin.py                 # the issue's sizes (minutes)
    python bench/dropin.py --quick --no-flex                 # small smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, thread_note, write_results  # noqa: E402

import vilg.integrations.transformers as vt  # noqa: E402
from vilg.layouts import neighborhood_2d, sliding_window  # noqa: E402
from vilg.nn import HAS_MODIFIERS  # noqa: E402


def masked_sdpa(mask):
    """transformers attention function: torch SDPA with an explicit boolean mask."""

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2), None

    return attention


def no_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function that attends nothing (zeros, gradient path to q kept):
    the model's time without attention, the floor any attention implementation adds to."""
    return q.transpose(1, 2) * 0.0, None


def compiled_flex(block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = flex(
            q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2), None

    return attention


def interleaved(name, fns, seq, args) -> list[dict]:
    """Median ms of each implementation's fwd and fwd+bwd, timed in rounds that run every
    implementation once, so that a shared machine's load drifting over minutes hits them
    alike (a failing one, e.g. FlexAttention's CPU backward, is recorded and dropped)."""
    rows = {k: {"model": name, "attention": k, "seq": seq} for k in fns}
    for col, which in (("fwd_ms", 0), ("fwd_bwd_ms", 1)):
        live = dict(fns)
        times = {k: [] for k in fns}
        for r in range(args.warmup + args.repeat):
            for k, pair in list(live.items()):
                t0 = time.perf_counter()
                try:
                    pair[which]()
                except Exception as e:  # noqa: BLE001
                    err = f"{type(e).__name__}: {str(e)[:200]}"
                    rows[k][col.replace("_ms", "_error")] = err
                    print(f"{name}/{k} {col}: {err}", file=sys.stderr)
                    del live[k]
                    continue
                if r >= args.warmup:
                    times[k].append((time.perf_counter() - t0) * 1e3)
        for k, ts in times.items():
            rows[k][col] = statistics.median(ts) if ts else None
            rows[k][col.replace("_ms", "_rounds_ms")] = ts  # every timed round, in order
    out = list(rows.values())
    for r in out:
        for col in ("fwd_ms", "fwd_bwd_ms"):
            if r.get(col) and out[0].get(col):
                r[col.replace("_ms", "_x_vs_vilg")] = r[col] / out[0][col]
    cols = ["model", "attention", "fwd_ms", "fwd_bwd_ms", "fwd_x_vs_vilg", "fwd_bwd_x_vs_vilg"]
    print_table(out, cols)
    return out


def llama_case(args):
    from transformers import AutoModelForCausalLM, MistralConfig

    L, w = args.seq, args.window
    cfg = MistralConfig(
        vocab_size=1024,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=L,
        sliding_window=w,
    )

    def make(impl):  # a config copy each: from_config records the implementation in it
        return AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=impl)

    def layout_fn(n):
        return sliding_window(n, w)

    ids = torch.randint(0, 1024, (1, L), generator=torch.Generator().manual_seed(0))
    return make, layout_fn, dict(input_ids=ids), "sdpa"


def vit_case(args):
    from transformers import AutoModelForImageClassification, ViTConfig

    g, p = args.grid, 4
    cfg = ViTConfig(
        image_size=g * p,
        patch_size=p,
        hidden_size=args.vit_hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=6,
        intermediate_size=args.vit_hidden * 4,
        num_labels=10,
    )

    def make(impl):
        return AutoModelForImageClassification.from_config(
            copy.deepcopy(cfg), attn_implementation=impl
        )

    def layout_fn(n):  # the CLS token is the global prefix
        return neighborhood_2d((g, g), args.nbhd, prefix=1)

    x = torch.randn(1, 3, g * p, g * p, generator=torch.Generator().manual_seed(0))
    return make, layout_fn, dict(pixel_values=x), None


class FlashAttnLM(torch.nn.Module):
    """A small decoder-only LM whose blocks call a flash-attn style `attn(q, k, v, causal=...,
    window_size=...)` on [B, L, heads, D] tensors: swapping `attn` swaps the implementation,
    as changing `from flash_attn import flash_attn_func` would."""

    def __init__(self, attn, vocab, hidden, heads, kv_heads, layers, window):
        super().__init__()
        self.attn, self.window = attn, window
        self.H, self.G, self.D = heads, kv_heads, hidden // heads
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(
                torch.nn.ModuleDict(
                    dict(
                        n1=torch.nn.RMSNorm(hidden),
                        qkv=torch.nn.Linear(hidden, (heads + 2 * kv_heads) * self.D, bias=False),
                        o=torch.nn.Linear(hidden, hidden, bias=False),
                        n2=torch.nn.RMSNorm(hidden),
                        up=torch.nn.Linear(hidden, 3 * hidden, bias=False),
                        down=torch.nn.Linear(3 * hidden, hidden, bias=False),
                    )
                )
            )
        self.norm = torch.nn.RMSNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        B, L, _ = x.shape
        H, G, D = self.H, self.G, self.D
        for b in self.blocks:
            qkv = b["qkv"](b["n1"](x)).view(B, L, H + 2 * G, D)
            q, k, v = qkv[:, :, :H], qkv[:, :, H : H + G], qkv[:, :, H + G :]
            o = self.attn(q, k, v, causal=True, window_size=(self.window - 1, 0))
            x = x + b["o"](o.reshape(B, L, H * D))
            x = x + b["down"](F.silu(b["up"](b["n2"](x))))
        return self.head(self.norm(x))


def sdpa_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                         window_size=(-1, -1), **unused):  # fmt: skip
    """flash_attn_func's call answered by SDPA with a dense boolean mask (built once per shape),
    in flash-attn's bottom-right alignment."""
    lq, lk = q.shape[1], k.shape[1]
    key = (lq, lk, causal, tuple(window_size))
    mask = _SDPA_MASKS.get(key)
    if mask is None:
        i = torch.arange(lq)[:, None] + lk - lq
        j = torch.arange(lk)[None, :]
        left, right = window_size
        right = 0 if causal else right
        mask = torch.ones(lq, lk, dtype=torch.bool)
        if left >= 0:
            mask &= j >= i - left
        if right >= 0:
            mask &= j <= i + right
        _SDPA_MASKS[key] = mask
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        scale=softmax_scale, enable_gqa=q.shape[2] != k.shape[2],
    )  # fmt: skip
    return out.transpose(1, 2)


_SDPA_MASKS: dict = {}


def run_flashapi(args) -> list[dict]:
    from vilg.flash_attn import flash_attn_func

    L = args.seq
    ids = torch.randint(0, 1024, (1, L), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    sizes = (1024, args.hidden, 8, 2, args.layers, args.window)
    models = {"vilg": FlashAttnLM(flash_attn_func, *sizes)}
    models["sdpa"] = FlashAttnLM(sdpa_flash_attn_func, *sizes)
    models["sdpa"].load_state_dict(models["vilg"].state_dict())
    with torch.no_grad():  # the same model: same logits (float32 tolerance)
        a, b = models["vilg"](ids[:, :256]), models["sdpa"](ids[:, :256])
        err = ((a - b).norm() / b.norm()).item()
    print(f"flashapi: vilg vs sdpa logits rel err {err:.2e} (seq 256)")
    fns = {}
    for label, m in models.items():

        def fwd(m=m):
            with torch.no_grad():
                m(ids)

        def fwd_bwd(m=m):
            m.zero_grad(set_to_none=True)
            m(ids).float().square().mean().backward()

        fns[label] = (fwd, fwd_bwd)
    rows = interleaved("flashapi", fns, L, args)
    rows[0]["logits_rel_err_vs_sdpa"] = err
    return rows


def gemma_case(args):
    from transformers import AutoModelForCausalLM, Gemma2Config

    L, w = args.seq, args.window
    cfg = Gemma2Config(
        vocab_size=1024,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=args.hidden // 8,
        query_pre_attn_scalar=args.hidden // 8,
        max_position_embeddings=L,
        sliding_window=w,
        layer_types=["sliding_attention"] * args.layers,
        attn_logit_softcapping=50.0,
    )

    def make(impl):
        return AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=impl)

    def layout_fn(n):
        return sliding_window(n, w)

    ids = torch.randint(0, 1024, (1, L), generator=torch.Generator().manual_seed(0))
    # sdpa: the window mask without the cap (a speed reference); eager: the model's own path
    return make, layout_fn, dict(input_ids=ids), None, {"eager": "eager"}


def run_case(name, case, args) -> list[dict]:
    make, layout_fn, inputs, native_sdpa, *more = case(args)
    extra_impls = more[0] if more else {}
    n = inputs["input_ids"].shape[1] if "input_ids" in inputs else 1 + args.grid**2
    tag = f"vilg_{name}"

    # first call: fresh layout cache, fresh model, nothing warm
    t0 = time.perf_counter()
    layout_fn(n)
    build = time.perf_counter() - t0
    fn = vt.register(tag, layout_fn=layout_fn)
    torch.manual_seed(0)
    model = make(tag)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    first = time.perf_counter() - t0
    layout = fn.layouts.get(n)
    print(
        f"{name}: {layout}\n{name}: layout build {build:.2f} s; first vilg model forward "
        f"(layout build included) {first:.2f} s"
    )

    impls = {"vilg": tag}
    if native_sdpa:
        impls["sdpa"] = native_sdpa
    else:
        vt_name = f"dense_mask_{name}"  # no "sdpa" in the name: transformers checks those
        from transformers import AttentionInterface

        AttentionInterface.register(vt_name, masked_sdpa(layout.dense_mask()))
        impls["sdpa"] = vt_name
    if args.flex:
        from transformers import AttentionInterface

        AttentionInterface.register(f"flex_{name}", compiled_flex(layout.to_block_mask()))
        impls["flex"] = f"flex_{name}"
    impls.update(extra_impls)
    if args.floor:
        from transformers import AttentionInterface

        AttentionInterface.register("no_attention", no_attention)
        impls["none"] = "no_attention"

    state = model.state_dict()
    fns = {}
    for label, impl in impls.items():
        m = make(impl)
        m.load_state_dict(state)

        def fwd(m=m):
            with torch.no_grad():
                m(**inputs)

        def fwd_bwd(m=m):
            m.zero_grad(set_to_none=True)
            m(**inputs).logits.float().square().mean().backward()

        fns[label] = (fwd, fwd_bwd)
    rows = interleaved(name, fns, n, args)
    by = {r["attention"]: r for r in rows}
    if "none" in by:  # Amdahl: the best ratio any attention could give this model
        for col in ("fwd_ms", "fwd_bwd_ms"):
            if by["sdpa"].get(col) and by["none"].get(col):
                bound = by["sdpa"][col] / by["none"][col]
                by["vilg"][col.replace("_ms", "_bound_x")] = bound
                print(f"{name} {col[:-3]}: sdpa / no-attention = {bound:.2f}x (vilg's ceiling)")
    rows[0]["first_call_s"] = first
    rows[0]["layout_build_s"] = build
    rows[0]["layout"] = repr(layout)
    if name == "gemma":  # the op rows would time plain attention, without the cap
        return rows
    return rows + attention_rows(name, model, layout, args)


def attention_rows(name, model, layout, args) -> list[dict]:
    """The attention op alone at the model's shapes (batch 1), vilg vs SDPA with the dense
    mask: what the model's end-to-end ratio dilutes with its projections and MLPs."""
    cfg = model.config
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    D = cfg.hidden_size // H
    L = layout.seq_len
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, L, D, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, Hkv, L, D, generator=gen, requires_grad=True) for _ in "kv")
    mask = layout.dense_mask()
    from vilg.ops import sparse_attention

    fns = {
        "vilg": lambda: sparse_attention(q, k, v, layout),
        "sdpa": lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=H != Hkv
        ),
    }
    pairs = {}
    for label, f in fns.items():

        def fwd(f=f):
            with torch.no_grad():
                f()

        def fwd_bwd(f=f):
            f().sum().backward()

        pairs[label] = (fwd, fwd_bwd)
    return interleaved(f"{name} attention op", pairs, L, args)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama,vit", help="any of llama,vit,flashapi,gemma")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vit-hidden", type=int, default=384)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--nbhd", type=int, default=7)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flex", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the model with no attention (the ceiling of any speed-up)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="recorded with the results (e.g. the load)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq, args.window, args.grid, args.layers, args.repeat = 512, 128, 16, 2, 1
    thread_note(torch.device("cpu"))
    cases = {"llama": llama_case, "vit": vit_case, "gemma": gemma_case}
    rows = []
    for name in args.models.split(","):
        if name == "flashapi":
            rows += run_flashapi(args)
        elif name == "gemma" and not HAS_MODIFIERS:
            print("gemma: skipped: this build of vilg has no score modifiers (softcap)")
            rows.append(dict(model="gemma", attention="vilg", skipped="no softcap in this build"))
        else:
            rows += run_case(name, cases[name], args)
    print()
    print_table(
        rows, ["model", "attention", "fwd_ms", "fwd_bwd_ms", "fwd_x_vs_vilg", "fwd_bwd_x_vs_vilg"]
    )
    config = {k: v for k, v in vars(args).items() if k != "out"}
    path = write_results("dropin", torch.device("cpu"), config, rows, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
