"""`vilg eval`: score a trained run on held-out shapes scenes (the test split).

text->image: for each prompt, n samples; every image is checked by the hand-written detector
(shape, colour, size and cell of every prompt object, and no extra objects). "before
reranking" averages over all samples; "after reranking" scores the matcher's top choice.
image->text: exact scene match (the decoded caption equals the reference), BLEU-4, CIDEr-D.
VQA: exact-answer accuracy. Image tokenizer: PSNR and codebook usage on test images.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vilg.app.data import shapes
from vilg.app.data.pool import shapes_pool
from vilg.app.eval import metrics
from vilg.app.eval.detector import score
from vilg.app.generate import Pipeline, to_uint8
from vilg.app.model.vqgan import code_stats, psnr

ATTRS = ("shape", "color", "size", "cell")


def _summ(rows: list[dict]) -> dict:
    objs = sum(r["objects"] for r in rows)
    out = {
        "fully_correct": round(float(np.mean([r["correct"] for r in rows])), 4),
        "no_extra": round(float(np.mean([r["no_extra"] for r in rows])), 4),
    }
    for a in ATTRS:
        out[f"{a}_acc"] = round(sum(r[a] for r in rows) / max(objs, 1), 4)
    return out


def eval_text2image(
    pipe: Pipeline, scenes, lang: str, n: int, batch: int = 16, **sample_kw
) -> dict:
    before, after, examples = [], [], []
    for s in range(0, len(scenes), batch):
        chunk = scenes[s : s + batch]
        prompts = [shapes.caption(sc, lang) for sc in chunk]
        out = pipe.generate(prompts, n=n, seed=s, **sample_kw)
        imgs = to_uint8(out["images"])
        for p, sc in enumerate(chunk):
            rows = [score(imgs[p, k], sc) for k in range(n)]
            before += rows
            after.append(rows[0])  # index 0 = matcher's best (or first sample if no matcher)
            if len(examples) < 4:
                examples.append({"prompt": prompts[p], "correct_top1": rows[0]["correct"]})
    return {
        "before_rerank": _summ(before),
        "after_rerank": _summ(after),
        "prompts": len(scenes),
        "samples_per_prompt": n,
        "reranked": pipe.matcher is not None,
        "examples": examples,
    }


def eval_captions(
    pipe: Pipeline, images: torch.Tensor, scenes, lang: str, beam: int = 1, batch: int = 64
) -> dict:
    hyps = []
    for s in range(0, len(images), batch):
        hyps += pipe.caption(images[s : s + batch], lang=lang, beam=beam)
    refs = [shapes.caption(sc, lang) for sc in scenes]
    ok = [h == r for h, r in zip(hyps, refs)]
    return {
        "exact": round(float(np.mean(ok)), 4),
        "exact_by_objects": _by_objects(ok, scenes),
        "bleu4": round(metrics.bleu4(hyps, [[r] for r in refs]), 4),
        "cider_d": round(metrics.cider_d(hyps, [[r] for r in refs]), 4),
        "n": len(refs),
        "examples": [{"ref": r, "hyp": h} for h, r in list(zip(hyps, refs))[:3]],
    }


def eval_vqa(pipe: Pipeline, images: torch.Tensor, scenes, lang: str, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, 77])
    qa = []
    for i, sc in enumerate(scenes):
        kind = shapes.QUESTION_KINDS[i % len(shapes.QUESTION_KINDS)]
        qa.append((i, kind, *shapes.question(sc, kind, lang, rng)))
    ok = [False] * len(qa)
    # one question text at a time shares a prompt length; group identical questions
    groups: dict[str, list] = {}
    for row in qa:
        groups.setdefault(row[2], []).append(row)
    for q, rows in groups.items():
        answers = pipe.answer(images[[r[0] for r in rows]], q)
        for (i, _, _, a), pred in zip(rows, answers):
            ok[i] = pred == a
    return {
        "accuracy": round(sum(ok) / max(len(qa), 1), 4),
        "n": len(qa),
        "by_kind": _accuracy_by(ok, [kind for _, kind, _, _ in qa]),
        "by_objects": _by_objects(ok, scenes),
    }


def _accuracy_by(ok: list, keys: list) -> dict:
    groups: dict = {}
    for o, k in zip(ok, keys):
        groups.setdefault(k, []).append(o)
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(groups.items())}


def _by_objects(ok: list, scenes) -> dict:
    """Accuracy per object count: the share of 1-object scenes would hide the hard ones."""
    return _accuracy_by(ok, [str(len(sc)) for sc in scenes])


@torch.no_grad()
def eval_tokenizer(pipe: Pipeline, images: torch.Tensor, scenes) -> dict:
    codes = pipe.vq.encode(images.to(pipe.device))
    rec = pipe.vq.decode_indices(codes).clamp(0, 1).cpu()
    recon_ok = np.mean([score(im, sc)["correct"] for im, sc in zip(to_uint8(rec), scenes)])
    return {
        "psnr": round(psnr(images, rec), 3),
        "detector_on_reconstructions": round(float(recon_ok), 4),
        **{k: round(v, 4) for k, v in code_stats(codes, pipe.vq.cfg.codebook_size).items()},
    }


def evaluate(
    pipe: Pipeline,
    n_prompts: int = 60,
    n_samples: int = 8,
    n_caption: int = 200,
    seed: int = 0,
    langs=("en", "zh"),
    sample_kw: dict | None = None,
    log=print,
) -> dict:
    t0 = time.perf_counter()
    size = pipe.vq.cfg.image_size
    test = shapes_pool("test", max(n_caption, n_prompts), seed=seed, image_size=size)
    images = test.image_tensor(np.arange(len(test)))
    res: dict = {"split": "test", "seed": seed, "image_size": size, "end_to_end": pipe.end_to_end}
    res["tokenizer"] = eval_tokenizer(pipe, images, test.scenes)
    log(f"tokenizer: {res['tokenizer']}")
    kw = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "cfg_scale": 1.0}
    kw.update(sample_kw or {})
    res["sampling"] = kw
    for lang in langs:
        r = {"text2image": eval_text2image(pipe, test.scenes[:n_prompts], lang, n_samples, **kw)}
        log(
            f"[{lang}] text->image: before {r['text2image']['before_rerank']['fully_correct']}"
            f" after {r['text2image']['after_rerank']['fully_correct']}"
        )
        r["caption"] = eval_captions(pipe, images[:n_caption], test.scenes[:n_caption], lang)
        c = r["caption"]
        log(
            f"[{lang}] caption exact {c['exact']} (by objects {c['exact_by_objects']})"
            f" bleu4 {c['bleu4']}"
        )
        r["vqa"] = eval_vqa(pipe, images[:n_caption], test.scenes[:n_caption], lang, seed)
        log(f"[{lang}] vqa {r['vqa']['accuracy']} (by objects {r['vqa']['by_objects']})")
        res[lang] = r
    res["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return res
