"""Train every stage of a run, in order, into one run directory:

  run/preset.json   the resolved recipe
  run/tokenizer.json  text tokenizer (HF tokenizers), trained on the run's corpus
  run/tokenizer/    image tokenizer (VQGAN)      run/matcher/   reranker
  run/generator/    unified transformer          run/end2end/   (optional) end-to-end model

Each stage writes model.safetensors + config.json when it finishes and is then skipped on a
re-run; an interrupted stage resumes from its last checkpoint.

With `dist` (under torchrun) the generator trains data-parallel on every rank; the small
stages (text tokenizer, image tokenizer, matcher) are trained by rank 0 alone while the
others wait, then every rank reads them back.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vilg.app import checkpoint as ckpt
from vilg.app.data import prompts
from vilg.app.data.text_tokenizer import TextTokenizer
from vilg.app.model.matcher import Matcher, MatcherConfig
from vilg.app.model.transformer import UnifiedTransformer
from vilg.app.model.vqgan import VQGAN
from vilg.app.train import distributed as D
from vilg.app.train.recipe import (
    any_order_prompts,
    build_pools,
    corpus,
    generator_config,
    train_config,
    vq_config,
)
from vilg.app.train.shards import is_prepared, train_from_prepared
from vilg.app.train.stages import (
    EndToEndTrainer,
    GeneratorTrainer,
    MatcherTrainer,
    VQTrainer,
    encode_pool,
)

STAGES = ("vq", "matcher", "generator", "end2end")


def _done(d: Path) -> bool:
    return (d / "model.safetensors").exists() and (d / "config.json").exists()


def train_run(
    preset: dict,
    out: str | Path,
    *,
    data: str | None = None,
    device="cpu",
    seed: int = 0,
    stages=("vq", "matcher", "generator"),
    progress: bool = True,
    log=print,
    dist: D.DistInfo | None = None,
    _joined: bool = False,
) -> dict:
    out = Path(out)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; expected some of {STAGES}")
    if is_prepared(data):  # codes prepared by `vilg prepare`: the generator stage streams them
        if set(stages) - {"vq", "matcher", "generator"} or "generator" not in stages:
            raise ValueError("prepared shards feed the generator stage only (--stages generator)")
        return train_from_prepared(
            preset, out, data, device=device, seed=seed, progress=progress, log=log, dist=dist
        )
    if dist is not None and not _joined:
        if "end2end" in stages:
            raise ValueError("end2end runs in one process; train it without --distributed")
        timings = {}
        if dist.is_main:  # rank 0 prepares the run (small stages) while the others wait
            small = tuple(s for s in stages if s != "generator")
            timings = train_run(
                preset,
                out,
                data=data,
                device=device,
                seed=seed,
                stages=small,
                progress=progress,
                log=log,
            )
        D.barrier()
        if "generator" not in stages:
            return timings
        if not dist.is_main:
            progress, log = False, lambda *a: None
        return {
            **timings,
            **train_run(
                preset,
                out,
                data=data,
                device=device,
                seed=seed,
                stages=("generator",),
                progress=progress,
                log=log,
                dist=dist,
                _joined=True,
            ),
        }
    out.mkdir(parents=True, exist_ok=True)
    old = out / "preset.json"
    if old.exists():
        prev = ckpt.load_json(old)
        # end2end settings may be added later: only that stage reads them
        if {k: v for k, v in prev.items() if k not in ("timings", "end2end")} != {
            k: v for k, v in {**preset, "data_source": data}.items() if k != "end2end"
        }:
            raise ckpt.CheckpointError(
                f"{out} was trained with a different recipe; use another --out directory"
            )
    if dist is None or dist.is_main:
        ckpt.atomic_write_json(old, {**preset, "data_source": data})
    timings: dict = {}
    t0 = time.perf_counter()
    train, val = build_pools(preset, data, seed)
    log(
        f"data: {len(train)} train / {len(val)} val images "
        f"({preset['data']['image_size']} px){' ' + str(train.stats) if train.stats else ''}"
    )

    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tok = TextTokenizer.load(tok_path)
    else:
        tok = TextTokenizer.train(
            corpus(train, seed),
            vocab_size=preset.get("text_vocab", 1000 if data is None else 8000),
        )
        tok.save(tok_path)
    timings["data_and_text_tokenizer"] = round(time.perf_counter() - t0, 1)
    dev = torch.device(device)

    # ---- image tokenizer
    t = time.perf_counter()
    vq_cfg = vq_config(preset)
    vq = VQGAN(vq_cfg)
    if _done(out / "tokenizer"):
        ckpt.load_model_state(vq, out / "tokenizer" / "model.safetensors")
    elif "vq" in stages:
        VQTrainer(
            vq, train_config(preset, "vq", seed, progress), out / "tokenizer", train, val, dev
        ).fit()
    else:
        raise ckpt.CheckpointError(f"{out} has no trained image tokenizer")
    timings["image_tokenizer"] = round(time.perf_counter() - t, 1)

    # ---- matcher
    t = time.perf_counter()
    tasks = preset["generator"].get("tasks", {})
    texts = [x for caps in train.texts.values() for x in caps[:5000]]
    if train.scenes is not None and any_order_prompts(preset):  # every wording of the grammar
        texts += prompts.corpus(train.scenes[:2000], np.random.default_rng([seed, 32]))
    T = max(len(tok.encode(x)) for x in texts) + 8
    text_len = preset.get("text_len", min(max(T, 16), 128))
    if "matcher" in stages and not _done(out / "matcher"):
        mcfg = MatcherConfig(
            image_size=vq_cfg.image_size,
            text_vocab=tok.vocab_size,
            text_len=text_len,
            **preset["matcher"]["model"],
        )
        MatcherTrainer(
            Matcher(mcfg),
            train_config(preset, "matcher", seed, progress),
            out / "matcher",
            train,
            val,
            tok,
            dev,
            shuffle=tasks.get("t2i_shuffle", False),
            paraphrase=tasks.get("t2i_paraphrase", 0.0),
        ).fit()
    timings["matcher"] = round(time.perf_counter() - t, 1)

    # ---- generator (two-stage) and / or end-to-end
    for stage in ("generator", "end2end"):
        if stage not in stages or _done(out / stage):
            continue
        t = time.perf_counter()
        codes, val_codes = encode_pool(vq, train, dev), encode_pool(vq, val, dev)
        gen = UnifiedTransformer(generator_config(preset, vq_cfg, tok.vocab_size, text_len, stage))
        if stage == "generator":
            trainer, image_vq = GeneratorTrainer, vq  # vq only draws sample grids here
        else:
            if _done(out / "generator"):  # start from the two-stage generator's weights
                own = gen.state_dict()
                src = ckpt.load_tensors(out / "generator" / "model.safetensors")
                own.update({k: v for k, v in src.items() if k in own})
                gen.load_state_dict(own)
            trainer, image_vq = EndToEndTrainer, VQGAN(vq_cfg)  # its decoder is fine-tuned
            image_vq.load_state_dict(vq.state_dict())
        trainer(
            gen,
            train_config(preset, stage, seed, progress),
            out / stage,
            train,
            codes,
            val,
            val_codes,
            tok,
            vq=image_vq,
            device=D.device_for(dist, dev),
            **preset["generator"].get("tasks", {}),  # task mix: vqa_frac, vqa_weight, ...
            **({"dist": dist} if dist is not None else {}),
        ).fit()
        timings[stage] = round(time.perf_counter() - t, 1)
    timings["total"] = round(time.perf_counter() - t0, 1)
    if dist is None or dist.is_main:
        ckpt.atomic_write_json(out / "timings.json", timings)
    return timings
