"""Whole transformers models on vilg attention vs the same model on masked SDPA and on
FlexAttention (compiled), one process, forward and forward+backward.

Models are built from configs (random weights):
  llama: Mistral-style causal LM (Llama blocks + sliding window), hidden 512, 8 heads, 2 kv
         heads, 4 layers, seq 4096, window 512; sdpa gets transformers' own sliding mask.
  vit:   ViT, hidden 384, 6 heads, 4 layers, 64x64 patch grid (+ CLS), 7x7 neighbourhood;
         sdpa gets the same layout as a dense boolean mask (ViT itself has no mask).
Also times the first vilg call with nothing warm (layout build + kernels). Ratios are
printed and saved under bench/results/. On a shared CPU, pin OMP_NUM_THREADS (bench/common.py).

    OMP_NUM_THREADS=2 python bench/dropin.py                 # the issue's sizes (minutes)
    python bench/dropin.py --quick --no-flex                 # small smoke run
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, print_table, thread_note, write_results  # noqa: E402

import vilg.integrations.transformers as vt  # noqa: E402
from vilg.layouts import neighborhood_2d, sliding_window  # noqa: E402


def masked_sdpa(mask):
    """transformers attention function: torch SDPA with an explicit boolean mask."""

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2), None

    return attention


def compiled_flex(block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = flex(
            q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2), None

    return attention


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


def run_case(name, case, args) -> list[dict]:
    make, layout_fn, inputs, native_sdpa = case(args)
    n = inputs["input_ids"].shape[1] if "input_ids" in inputs else 1 + args.grid**2
    tag = f"vilg_{name}"

    # first call: fresh layout cache, fresh model, nothing warm
    fn = vt.register(tag, layout_fn=layout_fn)
    torch.manual_seed(0)
    model = make(tag)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    first = time.perf_counter() - t0
    layout = fn.layouts.get(n)
    print(f"{name}: {layout}\n{name}: first vilg forward (layout build included) {first:.2f} s")

    impls = {"vilg": tag}
    if native_sdpa:
        impls["sdpa"] = native_sdpa
    else:
        vt_name = f"sdpa_masked_{name}"
        from transformers import AttentionInterface

        AttentionInterface.register(vt_name, masked_sdpa(layout.dense_mask()))
        impls["sdpa"] = vt_name
    if args.flex:
        from transformers import AttentionInterface

        AttentionInterface.register(f"flex_{name}", compiled_flex(layout.to_block_mask()))
        impls["flex"] = f"flex_{name}"

    rows = []
    state = model.state_dict()
    for label, impl in impls.items():
        m = make(impl)
        m.load_state_dict(state)
        row = {"model": name, "attention": label, "seq": n}

        def fwd(m=m):
            with torch.no_grad():
                m(**inputs)

        def fwd_bwd(m=m):
            m.zero_grad(set_to_none=True)
            m(**inputs).logits.float().square().mean().backward()

        for col, f in (("fwd_ms", fwd), ("fwd_bwd_ms", fwd_bwd)):
            try:
                row[col] = bench(f, [()], torch.device("cpu"), args.warmup, args.repeat)
            except Exception as e:  # noqa: BLE001 - e.g. FlexAttention's CPU path has no backward
                row[col] = None
                row[col.replace("_ms", "_error")] = f"{type(e).__name__}: {str(e)[:200]}"
                print(f"{name}/{label} {col}: {row[col.replace('_ms', '_error')]}", file=sys.stderr)
        rows.append(row)
        print_table([row], ["model", "attention", "fwd_ms", "fwd_bwd_ms"])
    base = rows[0]
    for r in rows:
        for col in ("fwd_ms", "fwd_bwd_ms"):
            if r.get(col) and base.get(col):
                r[col.replace("_ms", "_x_vs_vilg")] = r[col] / base[col]
    rows[0]["first_call_s"] = first
    rows[0]["layout"] = repr(layout)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama,vit")
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
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.seq, args.window, args.grid, args.layers, args.repeat = 512, 128, 16, 2, 1
    thread_note(torch.device("cpu"))
    cases = {"llama": llama_case, "vit": vit_case}
    rows = []
    for name in args.models.split(","):
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
