"""Data-parallel training throughput of the generator: samples/s on 1, 2, ... processes.

Each world size runs the real training loop (GeneratorTrainer, DDP or FSDP2, gloo on CPU /
nccl on GPU) for --warmup + --steps steps of a global batch of --batch images (each image
gives a text->image row, 0.5 caption rows and 0.5 VQA rows: the default task mix) and times
the --steps after the warm-up. Samples/s counts images of the global batch. On a GPU it also
reports the model FLOPs utilisation, MFU = 6 * N * tokens / time / peak, with N the
parameters outside the embeddings and tokens the sequence positions of all rows (the
standard training estimate; attention's own FLOPs are left out).

  OMP_NUM_THREADS=1 python bench/scaling.py --shape tiny --worlds 1,2
  python bench/scaling.py --shape 300m --device cuda --worlds 1     # a GPU: MFU too

The CPU numbers of a shared machine depend on its load (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, print_table, write_results  # noqa: E402

from vilg.app.train.distributed import free_port, local_rank_env  # noqa: E402

# generator shapes: the presets' own, and ERNIE-ViLG's 300M end-to-end experiment
# (24 layers, 1024 wide, 16 heads, a 32x32 token grid) defined here, not as a preset
SHAPES = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32, "grid": (3, 3), "vocab": 80},
    "demo": {"n_layer": 4, "n_head": 8, "n_embd": 64, "grid": (3, 3), "vocab": 128},
    "real": {"n_layer": 12, "n_head": 8, "n_embd": 512, "grid": (8, 8), "vocab": 1024},
    "300m": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "grid": (32, 32), "vocab": 8192},
}


def _trainer(args, out, dist=None):
    import numpy as np

    from vilg.app.data.pool import shapes_pool
    from vilg.app.data.text_tokenizer import TextTokenizer
    from vilg.app.model.transformer import GPTConfig, UnifiedTransformer
    from vilg.app.train import distributed as D
    from vilg.app.train.trainer import TrainConfig

    shape = SHAPES[args.shape]
    tok = TextTokenizer.load(args.tokenizer)
    pool = shapes_pool("train", 256, 0, 48)
    H, W = shape["grid"]
    rng = np.random.default_rng(0)  # token ids are all the speed depends on
    codes = torch.from_numpy(rng.integers(shape["vocab"], size=(len(pool), H * W)))
    torch.manual_seed(0)
    gen = UnifiedTransformer(
        GPTConfig(
            text_vocab=tok.vocab_size,
            image_vocab=shape["vocab"],
            text_len=64,
            grid=shape["grid"],
            n_layer=shape["n_layer"],
            n_head=shape["n_head"],
            n_embd=shape["n_embd"],
        )
    )
    cfg = TrainConfig(
        steps=args.warmup + args.steps,
        batch_size=args.batch,
        lr=1e-4,
        warmup=1,
        ckpt_every=0,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        progress=False,
    )
    tr = Timed(
        gen,
        cfg,
        out,
        pool,
        codes,
        pool,
        codes,
        tok,
        device=D.device_for(dist, args.device),
        dist=dist,
    )
    return tr


def _timed_class():
    from vilg.app.train.stages import GeneratorTrainer

    class Timed(GeneratorTrainer):
        """The training loop only: no evaluation, checkpoint or export to time."""

        stamps: list

        def after_step(self, step):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps = getattr(self, "stamps", []) + [time.perf_counter()]

        def save(self):
            return None

        def export(self):
            return None

        def _log_eval(self):
            return None

    return Timed


Timed = None


def _rank(rank, world, port, args, result):
    global Timed
    local_rank_env(rank, world, port)
    torch.set_num_threads(args.threads)
    from vilg.app.train import distributed as D

    Timed = _timed_class()
    dist = D.init(args.mode, timeout_min=10) if world > 1 else None
    try:
        with tempfile.TemporaryDirectory() as out:
            tr = _trainer(args, out, dist)
            tr.fit(resume=False)
            t = tr.stamps[-1] - tr.stamps[args.warmup - 1]
            if rank == 0:
                n_params = sum(p.numel() for n, p in tr.model.named_parameters() if "emb" not in n)
                Path(result).write_text(json.dumps({"seconds": t, "params": n_params}))
    finally:
        D.shutdown()


def tokens_per_image(args) -> float:
    """Sequence positions per image of the batch (t2i: text + grid; 0.5 captions and 0.5
    VQA rows: text + grid), with the shapes captions' ~16 tokens as the text length."""
    H, W = SHAPES[args.shape]["grid"]
    return 2 * (16 + H * W)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--worlds", default="1,2", help="process counts to time")
    ap.add_argument("--mode", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--batch", type=int, default=16, help="global batch (images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense peak for MFU (e.g. 989 for an H100/H200 in bf16)",
    )
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/...)")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    from vilg.app.data.shapes import all_corpus_text
    from vilg.app.data.text_tokenizer import TextTokenizer

    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.tokenizer = str(Path(tmp) / "tok.json")  # one vocabulary for every process
        TextTokenizer.train(all_corpus_text(0, 200)).save(args.tokenizer)
        for world in [int(w) for w in args.worlds.split(",")]:
            if device.type == "cuda" and world > torch.cuda.device_count():
                print(f"skip world {world}: {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
                continue
            result = Path(tmp) / f"world{world}.json"
            mp.start_processes(
                _rank,
                args=(world, free_port(), args, str(result)),
                nprocs=world,
                start_method="spawn",
            )
            r = json.loads(result.read_text())
            sps = args.batch * args.steps / r["seconds"]
            row = {
                "world": world,
                "mode": args.mode if world > 1 else "single",
                "samples_per_s": round(sps, 2),
                "step_ms": round(1e3 * r["seconds"] / args.steps, 1),
                "params_non_embedding": r["params"],
            }
            if args.peak_tflops:
                flops = 6 * r["params"] * tokens_per_image(args) * sps
                row["mfu"] = round(flops / (world * args.peak_tflops * 1e12), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if len(rows) > 1:
        for r in rows:
            r["speedup_vs_1"] = round(r["samples_per_s"] / rows[0]["samples_per_s"], 2)
    config = {k: v for k, v in vars(args).items() if k != "tokenizer"}
    config["shape_detail"] = SHAPES[args.shape]
    config["cpus_visible"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    )
    config["device_name"] = device_name(device)
    path = write_results(f"scaling-{args.shape}", device, config, rows, args.out)
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
