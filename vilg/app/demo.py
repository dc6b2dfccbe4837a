"""`vilg demo`: train all stages on the built-in shapes data, evaluate, write a gallery."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np

from vilg.app.data import shapes
from vilg.app.data.pool import shapes_pool
from vilg.app.eval.detector import score
from vilg.app.eval.evaluate import evaluate
from vilg.app.generate import Pipeline, save_grid, to_uint8
from vilg.app.train import checkpoint as ckpt
from vilg.app.train.presets import get_preset
from vilg.app.train.run import train_run

GALLERY_PROMPTS = 6


def run_demo(
    out: str | Path = "runs/demo",
    preset: str = "demo",
    device="cpu",
    seed: int = 0,
    eval_kw: dict | None = None,
    log=print,
) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    timings = train_run(get_preset(preset), out, device=device, seed=seed, log=log)
    pipe = Pipeline.load(out, device=device)
    # 500 scenes per language: about +-1.3 points of sampling noise at 90% (200: +-2.1)
    kw = {"n_prompts": 50, "n_samples": 8, "n_caption": 500, **(eval_kw or {})}
    t = time.perf_counter()
    metrics = evaluate(pipe, seed=seed, log=log, **kw)
    timings["eval"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    page = write_gallery(pipe, out / "gallery", metrics, seed)
    timings["gallery"] = round(time.perf_counter() - t, 1)
    timings["demo_total"] = round(time.perf_counter() - t0, 1)
    metrics["timings_s"] = timings
    ckpt.atomic_write_json(out / "eval.json", metrics)
    log(f"gallery: {page}\nmetrics: {out / 'eval.json'}\ntimings (s): {json.dumps(timings)}")
    return metrics


def _img(rel: str, title: str = "") -> str:
    return f'<img src="{html.escape(rel)}" title="{html.escape(title)}" class="px">'


def write_gallery(pipe: Pipeline, folder: Path, metrics: dict, seed: int = 0, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    size = pipe.vq.cfg.image_size
    # gallery prompts come from test scenes beyond those used by the evaluation
    test = shapes_pool("test", 1000 + GALLERY_PROMPTS, seed, size)
    scenes = test.scenes[1000:]
    from PIL import Image

    parts = [
        (
            "<h2>Text &rarr; image</h2><p>8 samples per prompt, sorted by the matcher "
            "(best first; a green border marks images the detector finds fully correct). "
            "Left: the ground-truth rendering.</p><table>"
        )
    ]
    for i, sc in enumerate(scenes):
        for lang in shapes.LANGS:
            prompt = shapes.caption(sc, lang)
            res = pipe.generate([prompt], n=n, seed=seed + i)
            arr = to_uint8(res["images"][0])
            gt = f"p{i}_gt.png"
            Image.fromarray(shapes.render(sc, size)).resize(
                (size * 2, size * 2), Image.NEAREST
            ).save(folder / gt)
            cells = [_img(gt, "ground truth")]
            for k in range(n):
                name = f"p{i}_{lang}_{k}.png"
                Image.fromarray(arr[k]).resize((size * 2, size * 2), Image.NEAREST).save(
                    folder / name
                )
                cls = "ok" if score(arr[k], sc)["correct"] else "bad"
                tip = "matcher score {:.3f}".format(float(res["scores"][0, k]))
                cells.append(f'<span class="{cls}">{_img(name, tip)}</span>')
            row = "".join(cells)
            parts.append(f"<tr><td class='t'>{html.escape(prompt)}</td><td>{row}</td></tr>")
    parts.append(
        "</table><h2>Image &rarr; text and VQA</h2><table><tr><th>image</th>"
        "<th>captions (greedy / beam 3)</th><th>questions</th></tr>"
    )
    imgs = test.image_tensor(np.arange(1000, 1000 + GALLERY_PROMPTS))
    rng = np.random.default_rng(seed)
    for i, sc in enumerate(scenes):
        name = f"c{i}.png"
        save_grid(imgs[i : i + 1], folder / name, nrow=1, scale=2)
        caps, qas = [], []
        for lang in shapes.LANGS:
            g = pipe.caption(imgs[i : i + 1], lang=lang)[0]
            b = pipe.caption(imgs[i : i + 1], lang=lang, beam=3)[0]
            ref = shapes.caption(sc, lang)
            caps.append(
                f"{html.escape(g)} {'✓' if g == ref else '✗'}<br>"
                f"<i>{html.escape(b)}</i> {'✓' if b == ref else '✗'}"
            )
            for kind in ("color", "where", "count", "exists"):
                q, a = shapes.question(sc, kind, lang, rng)
                pred = pipe.answer(imgs[i : i + 1], q)[0]
                qas.append(
                    f"{html.escape(q)} &rarr; <b>{html.escape(pred)}</b> "
                    f"{'✓' if pred == a else '✗ (' + html.escape(a) + ')'}"
                )
        parts.append(
            f"<tr><td>{_img(name)}</td><td>{'<hr>'.join(caps)}</td><td>{'<br>'.join(qas)}</td></tr>"
        )
    parts.append("</table>")
    summary = {k: metrics[k] for k in ("tokenizer",) if k in metrics}
    for lang in shapes.LANGS:
        if lang in metrics:
            m = metrics[lang]
            t2i = m["text2image"]
            before, after = (t2i[k]["fully_correct"] for k in ("before_rerank", "after_rerank"))
            by = m.get("text2image_by_prompts", {})
            summary[lang] = {
                "text2image fully correct (before / after rerank)": f"{before} / {after}",
                **{f"text2image after rerank, {k} prompts": v for k, v in by.items()},
                "caption exact": m["caption"]["exact"],
                "BLEU-4": m["caption"]["bleu4"],
                "CIDEr-D": m["caption"]["cider_d"],
                "VQA accuracy": m["vqa"]["accuracy"],
            }
    page = folder / "index.html"
    doc = (
        "<!doctype html><meta charset='utf-8'><title>vilg demo</title><style>"
        "body{font-family:sans-serif;background:#111;color:#ddd}td{padding:4px;"
        "vertical-align:top}.px{image-rendering:pixelated;margin:2px}.ok img{outline:2px "
        "solid #3c3}.bad img{outline:2px solid #633}.t{max-width:320px}</style>"
        "<h1>vilg demo: bilingual shapes</h1><h2>Metrics (held-out test scenes)</h2><pre>"
        + html.escape(json.dumps(summary, indent=2, ensure_ascii=False))
        + "</pre>"
        + "".join(parts)
    )
    ckpt.atomic_write_bytes(page, doc.encode())
    return page
