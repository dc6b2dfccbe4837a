"""Block-sparse attention vs dense attention with the same mask.

Anchors: PyTorch SDPA with the boolean mask (what a user would otherwise write), and
FlexAttention with the equivalent BlockMask (--flex; compiled, so slow to start on a CPU).
--ceiling adds SDPA with no mask at all (the flash kernel on a GPU): not a competitor but the
dense rate to compare vilg's TFLOP/s on its visited tiles with (`pct_of_ceiling_tflops`).
Reports median time, speedup and TFLOP/s counted over the tiles vilg visits. On a shared CPU,
pin the thread count (OMP_NUM_THREADS=1); see bench/common.py.

    python bench/attention.py                      # CPU, B=1, 8 heads, D=64, T=64, 32x32
    python bench/attention.py --device cuda --dtype bfloat16 --batch 8 --heads 16 --flex
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, print_table, thread_note, write_results  # noqa: E402

from vilg.layouts import ernie_vilg  # noqa: E402
from vilg.ops import sparse_attention  # noqa: E402


def flex_fn(lay, B, H, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mask = lay.dense_mask(device)
    block_mask = create_block_mask(
        lambda b, h, q, k: mask[q, k], B, H, lay.seq_len, lay.seq_len, device=device
    )
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def run(args) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    B, H, D, T = args.batch, args.heads, args.dim, args.text
    rows = []
    for side in args.grids:
        for kind in args.kinds:
            lay = ernie_vilg(kind, T, (side, side), args.direction)
            L = lay.seq_len
            mask = lay.dense_mask(device)
            sets = [
                [torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3)]
                for _ in range(args.rotate)
            ]
            impls = {
                "vilg": lambda q, k, v, lay=lay: sparse_attention(q, k, v, lay),
                "sdpa": lambda q, k, v, m=mask: F.scaled_dot_product_attention(q, k, v, m),
            }
            if args.flex:
                impls["flex"] = flex_fn(lay, B, H, device)
            if args.ceiling:
                impls["nomask"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
            # FLOPs of the visited tiles: QK^T and PV, 2 flops per multiply-add
            tile_flops = 4.0 * B * H * lay.num_tiles * lay.block_size**2 * D
            for mode in args.modes:
                row = dict(
                    kind=kind, grid=f"{side}x{side}", L=L, mode=mode, density=round(lay.density, 3)
                )
                for name, fn in impls.items():
                    if mode == "fwd":

                        def step(q, k, v, fn=fn):
                            with torch.no_grad():
                                fn(q, k, v)

                        ins = sets
                    else:

                        def step(q, k, v, fn=fn):
                            fn(q, k, v).sum().backward()

                        ins = [[t.clone().requires_grad_() for t in s] for s in sets]
                    ms = bench(step, ins, device, args.warmup, args.repeat)
                    row[f"{name}_ms"] = ms
                    per = 1 if mode == "fwd" else 3.5
                    if name == "vilg":
                        row["vilg_tflops"] = tile_flops * per / ms / 1e9
                    if name == "nomask":  # every one of the L x L entries
                        row["nomask_tflops"] = 4.0 * B * H * L * L * D * per / ms / 1e9
                if "nomask_tflops" in row:
                    row["pct_of_ceiling_tflops"] = 100 * row["vilg_tflops"] / row["nomask_tflops"]
                for name in impls:
                    if name not in ("vilg", "nomask"):
                        row[f"vs_{name}"] = row[f"{name}_ms"] / row["vilg_ms"]
                rows.append(row)
                print(row, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--grids", type=int, nargs="+", default=[16, 24, 32])
    p.add_argument("--kinds", nargs="+", default=["row", "column", "conv", "full"])
    p.add_argument("--direction", default="text2image")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    p.add_argument("--flex", action="store_true", help="also time FlexAttention (compiles)")
    p.add_argument("--ceiling", action="store_true", help="also time SDPA with no mask")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--rotate", type=int, default=2, help="input sets to rotate through")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("-o", "--out", default=None, help="JSON path (default under bench/results)")
    args = p.parse_args(argv)
    thread_note(torch.device(args.device))
    rows = run(args)
    cols = [
        "kind",
        "grid",
        "L",
        "mode",
        "density",
        "vilg_ms",
        "sdpa_ms",
        "vs_sdpa",
        "vilg_tflops",
    ] + (["flex_ms", "vs_flex"] if args.flex else [])
    cols += ["nomask_ms", "pct_of_ceiling_tflops"] if args.ceiling else []
    print()
    print_table(rows, cols)
    if not args.no_save:
        path = write_results("attention", torch.device(args.device), vars(args), rows, args.out)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
