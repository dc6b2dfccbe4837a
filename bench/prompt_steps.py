"""What training on prompts in any order and wording costs a demo generator step (issue #30).

Two copies of the demo preset's generator (same initial weights, same batches of images)
train side by side, alternating in chunks of steps with the order rotating every round:
  canonical  text->image rows use the caption in cell order (the recipe before)
  any        text->image rows in a random object order, half of them in a random wording
Recorded per variant: the median wall and CPU (process) time of a whole step, the time spent
building the batch (sampling and tokenizing the prompts included), and the mean padded length
of the text->image rows (the model's work per row). Steps are drawn from both phases of the
demo's task schedule (before and after the turn to VQA at 25% of the steps). The image codes
are random (a step's cost depends on the shapes only), so no image tokenizer is trained.

    OMP_NUM_THREADS=1 python bench/prompt_steps.py            # about 2 min of CPU
    OMP_NUM_THREADS=1 python bench/prompt_steps.py --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import thread_note, write_results  # noqa: E402

from vilg.app.data import prompts  # noqa: E402
from vilg.app.data.pool import shapes_pool  # noqa: E402
from vilg.app.data.text_tokenizer import TextTokenizer  # noqa: E402
from vilg.app.model.transformer import GPTConfig, UnifiedTransformer  # noqa: E402
from vilg.app.train.presets import get_preset  # noqa: E402
from vilg.app.train.stages import GeneratorTrainer  # noqa: E402
from vilg.app.train.trainer import TrainConfig  # noqa: E402

VARIANTS = {"canonical": {"t2i_shuffle": False, "t2i_paraphrase": 0.0}, "any": {}}


def make_trainers(n_scenes: int, out: Path) -> dict:
    preset = get_preset("demo")
    d, g = preset["data"], preset["generator"]
    pool = shapes_pool("train", n_scenes, 0, d["image_size"], d["train_count_probs"])
    val = shapes_pool("val", 16, 0, d["image_size"])
    tok = TextTokenizer.train(prompts.corpus_text(0, 2000))
    grid, vocab = (3, 3), preset["vq"]["model"]["codebook_size"]
    codes = torch.randint(vocab, (len(pool), 9))
    val_codes = torch.randint(vocab, (len(val), 9))
    torch.manual_seed(0)
    gen = UnifiedTransformer(
        GPTConfig(
            text_vocab=tok.vocab_size, image_vocab=vocab, text_len=64, grid=grid, **g["model"]
        )
    )
    cfg = TrainConfig(**{**g["train"], "seed": 0, "progress": False})
    out_trainers = {}
    for name, kw in VARIANTS.items():
        args = (copy.deepcopy(gen), cfg, out / name, pool, codes, val, val_codes, tok)
        out_trainers[name] = GeneratorTrainer(*args, **g.get("tasks", {}), **kw)
    return out_trainers


def one_step(tr: GeneratorTrainer, step: int) -> dict:
    w0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng([0, step, 0])
    idx = rng.integers(len(tr.pool), size=tr.cfg.batch_size)
    t2i, cap, vqa = tr.make_batches(
        tr.pool, tr.codes, tr.cap_ids, idx, rng, fracs=tr.fracs_at(step)
    )
    batch_s = time.perf_counter() - w0
    tr.model.train()
    tr.opt.zero_grad(set_to_none=True)
    loss = tr.total(tr.stream_losses(t2i, cap, vqa))
    loss.backward()
    tr.opt.step()
    return {
        "wall_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "batch_s": batch_s,
        "t2i_len": int(t2i["text"].shape[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.chunk = 1, 2
    dev = torch.device("cpu")
    thread_note(dev)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = make_trainers(500 if a.quick else 4000, Path(tmp))
        steps_total = trainers["any"].cfg.steps
        rows: dict = {k: [] for k in trainers}
        names = list(trainers)
        for r in range(a.rounds):
            for phase, start in (("t2i+captions", 50), ("vqa-heavy", steps_total // 2)):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    base = start + r * a.chunk
                    for s in range(base, base + a.chunk):
                        rows[name].append({"phase": phase, **one_step(trainers[name], s)})
    summary = []
    for name, rs in rows.items():
        warm = rs[1:]  # the first step builds the layouts
        summary.append(
            {
                "variant": name,
                "steps": len(warm),
                "median_step_wall_ms": round(1e3 * statistics.median(x["wall_s"] for x in warm), 1),
                "median_step_cpu_ms": round(1e3 * statistics.median(x["cpu_s"] for x in warm), 1),
                "median_batch_ms": round(1e3 * statistics.median(x["batch_s"] for x in warm), 2),
                "mean_t2i_text_len": round(statistics.mean(x["t2i_len"] for x in rs), 2),
                **{
                    f"median_step_cpu_ms_{p}": round(
                        1e3 * statistics.median(x["cpu_s"] for x in warm if x["phase"] == p), 1
                    )
                    for p in ("t2i+captions", "vqa-heavy")
                },
            }
        )
    by = {s["variant"]: s for s in summary}
    ratios = {
        k: round(by["any"][k] / by["canonical"][k], 3)
        for k in ("median_step_wall_ms", "median_step_cpu_ms", "mean_t2i_text_len")
    }
    for s in summary:
        print(s)
    print("any / canonical:", ratios)
    config = {"preset": "demo", "rounds": a.rounds, "chunk": a.chunk, "ratios": ratios}
    path = write_results("prompt_steps", dev, config, summary, a.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
