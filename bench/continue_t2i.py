"""Does order-free text->image keep improving with more text->image steps? (issue #30)

Continues a finished demo run's generator for STEPS more steps with a text->image-heavy mix
(prompts in any order and wording), then scores text->image on the evaluation's held-out
prompts (canonical, shuffled, paraphrased; 50 prompts x 8 samples per language). Writes the
continued generator to OUT/generator and the scores to a results file. Exploratory: it is not
the demo's recipe.

    OMP_NUM_THREADS=1 python bench/continue_t2i.py RUN OUT --steps 1200
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from vilg.app import checkpoint as ckpt  # noqa: E402
from vilg.app.data.pool import shapes_pool  # noqa: E402
from vilg.app.eval.evaluate import PROMPT_KINDS, eval_text2image  # noqa: E402
from vilg.app.generate import Pipeline  # noqa: E402
from vilg.app.train.stages import GeneratorTrainer, encode_pool  # noqa: E402
from vilg.app.train.trainer import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--fracs", default="1.0,0.25,0.5", help="t2i,cap,vqa rows per image")
    a = ap.parse_args()
    run, out = Path(a.run), Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("gallery", "checkpoints"))
    shutil.rmtree(out / "generator")
    preset = ckpt.load_json(run / "preset.json")
    pipe = Pipeline.load(run)
    d, seed = preset["data"], 0
    t0 = time.perf_counter()
    train = shapes_pool("train", d["train_size"], seed, d["image_size"], d["train_count_probs"])
    val = shapes_pool("val", d["val_size"], seed, d["image_size"])
    codes, val_codes = encode_pool(pipe.vq, train, "cpu"), encode_pool(pipe.vq, val, "cpu")
    fracs = [float(x) for x in a.fracs.split(",")]
    g = preset["generator"]
    tasks = {k: v for k, v in g.get("tasks", {}).items() if k != "schedule"}
    tasks.update(t2i_frac=fracs[0], cap_frac=fracs[1], vqa_frac=fracs[2])
    cfg = TrainConfig(
        **{
            **g["train"],
            "steps": a.steps,
            "lr": a.lr,
            "warmup": 20,
            "seed": 1,
            "progress": True,
            "eval_every": 0,
        }
    )
    trainer = GeneratorTrainer(
        pipe.gen, cfg, out / "generator", train, codes, val, val_codes, pipe.tok, **tasks
    )
    trainer.fit()
    train_s = time.perf_counter() - t0
    cont = Pipeline.load(out)
    test = shapes_pool("test", 500, seed, d["image_size"])
    kw = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "cfg_scale": 1.0}
    rows = []
    for lang in ("en", "zh"):
        for kind in PROMPT_KINDS:
            r = eval_text2image(cont, test.scenes[:50], lang, 8, prompts_kind=kind, seed=seed, **kw)
            rows.append(
                {
                    "lang": lang,
                    "prompts": kind,
                    "before_rerank": r["before_rerank"]["fully_correct"],
                    "after_rerank": r["after_rerank"]["fully_correct"],
                    "after_rerank_by_objects": r["after_rerank_by_objects"],
                }
            )
            print(rows[-1], flush=True)
    config = {
        "run": str(run),
        "extra_steps": a.steps,
        "lr": a.lr,
        "fracs": fracs,
        "train_seconds": round(train_s, 1),
        "base_run_generator_steps": g["train"]["steps"],
    }
    print(write_results("continue_t2i", torch.device("cpu"), config, rows))


if __name__ == "__main__":
    main()
