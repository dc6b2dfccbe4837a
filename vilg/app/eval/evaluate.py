"""`vilg eval`: score a trained run on held-out shapes scenes (the test split).

text->image: for each prompt, n samples, with the prompts written three ways (canonical:
the caption in cell order; shuffled: objects in another order; paraphrased: another order and
wording of the prompt grammar, vilg.app.data.prompts); every image is checked by the
hand-written detector (shape, colour, size and cell of every prompt object, and no extras). "before
reranking" averages over all samples; "after reranking" scores the matcher's top choice.
image->text: exact scene match (the decoded caption equals the reference), BLEU-4, CIDEr-D.
VQA: exact-answer accuracy. Image tokenizer: PSNR and codebook usage on test images.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vilg.app.data import prompts, shapes
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


PROMPT_KINDS = ("canonical", "shuffled", "paraphrased")


def eval_prompts(scenes, lang: str, kind: str, seed: int = 0) -> list[str]:
    """The prompts of one kind for the scenes: "canonical" (the caption, cell order),
    "shuffled" (canonical wording, objects in a random order other than the cell order when
    there are two or more) or "paraphrased" (a random order and a random non-canonical wording
    of the prompt grammar)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")
    if kind == "canonical":
        return [shapes.caption(sc, lang) for sc in scenes]
    rng = np.random.default_rng([seed, 78, PROMPT_KINDS.index(kind), shapes.LANGS.index(lang)])
    if kind == "shuffled":
        return [prompts.render(prompts.shuffled(sc, rng, differ=True), lang) for sc in scenes]
    return [prompts.paraphrased(sc, lang, rng) for sc in scenes]


def eval_text2image(
    pipe: Pipeline,
    scenes,
    lang: str,
    n: int,
    batch: int = 16,
    prompts_kind: str = "canonical",
    seed: int = 0,
    **sample_kw,
) -> dict:
    before, after, examples = [], [], []
    all_prompts = eval_prompts(scenes, lang, prompts_kind, seed)
    for s in range(0, len(scenes), batch):
        chunk = scenes[s : s + batch]
        texts = all_prompts[s : s + batch]
        out = pipe.generate(texts, n=n, seed=s, **sample_kw)
        imgs = to_uint8(out["images"])
        for p, sc in enumerate(chunk):
            rows = [score(imgs[p, k], sc) for k in range(n)]
            before += rows
            after.append(rows[0])  # index 0 = matcher's best (or first sample if no matcher)
            if len(examples) < 4:
                examples.append({"prompt": texts[p], "correct_top1": rows[0]["correct"]})
    return {
        "prompts_kind": prompts_kind,
        "before_rerank": _summ(before),
        "after_rerank": _summ(after),
        "after_rerank_by_objects": _by_objects([r["correct"] for r in after], scenes),
        "prompts": len(scenes),
        "samples_per_prompt": n,
        "reranked": pipe.matcher is not None,
        "examples": examples,
    }


@torch.no_grad()
def eval_matcher_order(pipe: Pipeline, images: torch.Tensor, scenes, lang: str, seed: int = 0):
    """Does the reranker score an image alike whatever the prompt's object order and wording?
    Over the scenes of two or more objects: the mean |score(canonical) - score(other)| for
    shuffled and paraphrased prompts, and how often the true prompt beats a hard negative (one
    attribute changed) when the two come in different orders / wordings."""
    from vilg.app.data.sequences import pad

    keep = [i for i, sc in enumerate(scenes) if len(sc) > 1]
    if pipe.matcher is None or not keep:
        return None
    sub = [scenes[i] for i in keep]
    x = images[keep].to(pipe.device)
    rng = np.random.default_rng([seed, 79, shapes.LANGS.index(lang)])
    negs = [prompts.render(prompts.perturb_objects(sc, rng), lang) for sc in sub]

    def scores(texts):
        ids, lens = pad([pipe.tok.encode(t) for t in texts], pipe.tok.pad_id)
        return pipe.matcher.score(x, ids.to(pipe.device), lens.to(pipe.device)).cpu()

    canon = scores(eval_prompts(sub, lang, "canonical", seed))
    neg = scores(negs)
    out = {"scenes": len(sub), "hard_negative_acc": {"canonical": _mean(canon > neg)}}
    for kind in PROMPT_KINDS[1:]:
        other = scores(eval_prompts(sub, lang, kind, seed))
        out[f"mean_abs_gap_{kind}"] = round(float((other - canon).abs().mean()), 4)
        out["hard_negative_acc"][kind] = _mean(other > neg)
    return out


def _mean(t: torch.Tensor) -> float:
    return round(float(t.float().mean()), 4)


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
        r: dict = {}
        for kind in PROMPT_KINDS:  # "text2image" is the canonical prompts' (as before)
            key = "text2image" if kind == "canonical" else f"text2image_{kind}"
            r[key] = eval_text2image(
                pipe, test.scenes[:n_prompts], lang, n_samples, prompts_kind=kind, seed=seed, **kw
            )
            log(
                f"[{lang}] text->image, {kind} prompts: before "
                f"{r[key]['before_rerank']['fully_correct']} after "
                f"{r[key]['after_rerank']['fully_correct']}"
            )
        r["text2image_by_prompts"] = {
            kind: r["text2image" if kind == "canonical" else f"text2image_{kind}"]["after_rerank"][
                "fully_correct"
            ]
            for kind in PROMPT_KINDS
        }
        r["matcher_order"] = eval_matcher_order(
            pipe, images[:n_caption], test.scenes[:n_caption], lang, seed
        )
        if r["matcher_order"] is not None:
            log(f"[{lang}] matcher across orders / wordings: {r['matcher_order']}")
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
