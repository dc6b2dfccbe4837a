"""Text->image generation speed: milliseconds per token and images/s of the whole decode loop
(prefill + one step per image token, greedy), vilg's decoding vs a dense KV-cache decode.

Modes (one model, the same weights, the same prompts):
  checked     the generation loop as it was before DecodePlan: the full [text | image]
              sequence prefilled, then every step through the public, fully checked
              vilg.ops.decode_attention (op dispatch and argument checks per layer per step)
  vilg        Stepper eager: a DecodePlan per layer (checked once), the kernel called
              directly, the prefill on [text | BOI] only
  compile     the same step under torch.compile (one graph: the position is a tensor)
  cuda-graph  the same step captured once and replayed (GPU only)
  sdpa        a dense KV-cache step: torch SDPA over the cached prefix with the layout's mask
              row (what a decoder without sparse kernels does)
  sdpa-graph  the dense step over the whole cache, captured (GPU only)
The modes run in rounds, each mode once per round in a rotating order, so a shared machine's
drifting load hits all alike; per mode the best round is reported, plus the median and best
10-step chunk of its steps (ms per token). The vilg modes must produce identical tokens; the
dense ones are compared too (float sums in another order may flip a near-tie argmax).

    python bench/generation.py                          # 4 layers, 256 wide, 32x32, batch 8
    python bench/generation.py --layers 12 --hidden 512 # the training benchmark's model
    python bench/generation.py --device cuda --dtype bfloat16 --batch 8 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, thread_note, write_results  # noqa: E402

from vilg.app.model.stepper import Stepper  # noqa: E402
from vilg.app.model.transformer import T2I, GPTConfig, UnifiedTransformer  # noqa: E402

CPU_MODES = ("checked", "vilg", "compile", "sdpa")
GPU_MODES = ("checked", "vilg", "cuda-graph", "sdpa", "sdpa-graph")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(m, mode: str, text, lens, tokens: int) -> dict:
    """Greedy text->image codes for `tokens` positions; returns codes and timings."""
    B, T = text.shape
    N, dev = m.cfg.n_image, text.device
    m.cfg.attn_impl = "sdpa" if mode.startswith("sdpa") else "vilg"
    step_mode = {"compile": "compile", "cuda-graph": "cuda-graph", "sdpa-graph": "cuda-graph"}
    _sync(dev)
    t0 = time.perf_counter()
    caches = m.new_caches(B, T + N, dev, dtype=next(m.parameters()).dtype)
    if mode == "checked":
        caches = [(k, v) for k, v in caches]  # plain tensors: the public op at every step
        image = torch.full((B, N), m.boi, dtype=torch.long, device=dev)
    else:
        image = torch.full((B, 1), m.boi, dtype=torch.long, device=dev)
    h = m(T2I, text, image, lens, caches=caches)[:, T]
    tok = m.image_logits(h).argmax(-1)
    if mode == "checked":

        def stepper(token, pos):
            return m.image_logits(m.step(T2I, token, pos, T, caches, lens))
    else:
        stepper = Stepper(
            m, T2I, T, caches, lens, head=m.image_logits, mode=step_mode.get(mode, "eager")
        )
    _sync(dev)
    t1 = time.perf_counter()
    codes, times = [tok], []
    for j in range(1, tokens):
        s = time.perf_counter()
        tok = stepper(tok, T + j).argmax(-1)
        if dev.type == "cuda" and j % 64 == 0:
            _sync(dev)  # keep the per-step clock honest on an asynchronous device
        codes.append(tok)
        times.append(time.perf_counter() - s)
    _sync(dev)
    t2 = time.perf_counter()
    # steps 1-16 include one-time work (plans, compilation, graph capture): not in the chunks
    chunks = [sum(times[i : i + 64]) / len(times[i : i + 64]) for i in range(16, len(times), 64)]
    return {
        "codes": torch.stack(codes, 1).cpu(),
        "prefill_ms": (t1 - t0) * 1e3,
        "decode_s": t2 - t1,
        "first_step_ms": times[0] * 1e3 if times else 0.0,
        "ms_per_token_median": statistics.median(chunks) * 1e3 if chunks else 0.0,
        "ms_per_token_best": min(chunks) * 1e3 if chunks else 0.0,
    }


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = GPTConfig(
        text_vocab=256,
        image_vocab=args.codes,
        text_len=args.text_len,
        grid=(args.grid, args.grid),
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.hidden,
    )
    m = UnifiedTransformer(cfg).eval().to(device=device, dtype=dtype)
    modes = args.modes or (GPU_MODES if device.type == "cuda" else CPU_MODES)
    tokens = min(args.tokens, cfg.n_image)
    out = {"batches": {}}
    for B in args.batch:
        g = torch.Generator().manual_seed(B)
        T = args.text_len
        text = torch.randint(0, 256, (B, T), generator=g).to(device)
        lens = torch.randint(T // 3, T + 1, (B,), generator=g).to(device)
        rounds: dict[str, list] = {md: [] for md in modes}
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for md in order:
                rounds[md].append(generate(m, md, text, lens, tokens))
                res = rounds[md][-1]
                print(
                    f"B={B} round {r} {md:>10}: prefill {res['prefill_ms']:8.1f} ms, "
                    f"{res['ms_per_token_median']:6.2f} ms/token (best chunk "
                    f"{res['ms_per_token_best']:.2f}), decode {res['decode_s']:.2f} s",
                    flush=True,
                )
        rows = {}
        ref_codes = rounds["vilg"][0]["codes"] if "vilg" in rounds else None
        for md, rs in rounds.items():
            best = min(rs, key=lambda x: x["decode_s"])
            row = {k: round(v, 4) for k, v in best.items() if k != "codes"}
            row["images_per_s"] = round(B / (best["decode_s"] + best["prefill_ms"] / 1e3), 4)
            row["ms_per_token_median_all_rounds"] = round(
                statistics.median(x["ms_per_token_median"] for x in rs), 4
            )
            if ref_codes is not None:
                row["same_tokens_as_vilg"] = bool(torch.equal(best["codes"], ref_codes))
                row["token_agreement_with_vilg"] = round(
                    float((best["codes"] == ref_codes).float().mean()), 5
                )
            rows[md] = row
        base = rows.get("checked")
        for md, row in rows.items():
            for name, ref in (("checked", base), ("sdpa", rows.get("sdpa"))):
                if ref is not None and md != name:
                    row[f"speedup_vs_{name}"] = round(
                        ref["ms_per_token_median"] / max(row["ms_per_token_median"], 1e-9), 3
                    )
        out["batches"][str(B)] = rows
        print(f"B={B} summary (median ms/token of the best round; speedups vs checked / sdpa):")
        for md, row in rows.items():
            print(
                f"  {md:>10}: {row['ms_per_token_median']:7.2f} ms/token  "
                f"{row['images_per_s']:8.3f} images/s  "
                f"x{row.get('speedup_vs_checked', 1.0):.2f} / "
                f"x{row.get('speedup_vs_sdpa', 1.0):.2f}"
                f"  same tokens as vilg: {row.get('same_tokens_as_vilg')}"
            )
    out["config"] = {
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "grid": args.grid,
        "text_len": args.text_len,
        "codes": args.codes,
        "tokens": tokens,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "device": device_name(device),
        "greedy": True,
    }
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--grid", type=int, default=32)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--codes", type=int, default=8192)
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--tokens", type=int, default=1024, help="image tokens to generate")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=None)
    p.add_argument("-o", "--output", default=None, help="result JSON path")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.device == "cpu":
        thread_note(torch.device("cpu"))
    res = run(args)
    rows = [
        {"batch": int(b), "mode": md, **row}
        for b, per in res["batches"].items()
        for md, row in per.items()
    ]
    path = write_results("generation", torch.device(args.device), res["config"], rows, args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
