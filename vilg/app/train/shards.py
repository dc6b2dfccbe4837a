"""Generator training from prepared tar shards: `vilg prepare` and the streaming trainer.

`prepare` encodes every image of a data source (image folder, raw tar shards, or the built-in
shapes scenes) with a run's trained image tokenizer and writes webdataset shards that hold
the codes next to the captions (and, for shapes, the scene, so VQA questions can be asked):

  OUT/train/shard-000000.tar ...   KEY.codes.npy  KEY.txt  [KEY.zh.txt  KEY.scene.json]
  OUT/val/shard-000000.tar         validation: every 10th sample, up to data.val_size
  OUT/prepared.json                run, source, token grid, counts of kept / skipped samples

`ShardGeneratorTrainer` then trains the generator on codes, not pixels, streaming the train
shards (vilg/app/data/stream.py): each rank reads its share of every global batch, and the
checkpoint stores the stream position, so a killed run resumes on the next unseen sample.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
import torch

from vilg.app import checkpoint as ckpt
from vilg.app.data import shapes
from vilg.app.data import stream as S
from vilg.app.data.pool import Pool
from vilg.app.data.text_tokenizer import TextTokenizer
from vilg.app.model.vqgan import VQGAN, VQConfig
from vilg.app.train import distributed as D
from vilg.app.train.recipe import build_pools, train_config
from vilg.app.train.stages import GeneratorTrainer

MARKER = "prepared.json"


def is_prepared(data: str | None) -> bool:
    return data is not None and (Path(data) / MARKER).exists()


def load_image_tokenizer(run: Path) -> VQGAN:
    d = Path(run) / "tokenizer"
    cfg = ckpt.load_json(d / "config.json")
    cfg.pop("kind", None)
    vq = VQGAN(VQConfig(**cfg))
    ckpt.load_model_state(vq, d / "model.safetensors")
    return vq.eval()


# ------------------------------------------------------------------ prepare


def _source_samples(preset: dict, data: str | None, seed: int, workers: int):
    """(split, image uint8 [S, S, 3], texts {lang: str}, scene | None) of the source, val
    first; corrupt samples of a user source are skipped and counted in the returned Counter."""
    from collections import Counter

    size = preset["data"]["image_size"]
    stats: Counter = Counter()
    if data is None:  # the built-in shapes scenes: the same splits as `vilg train`
        train, val = build_pools(preset, None, seed)

        def gen():
            for split, pool in (("val", val), ("train", train)):
                for i in range(len(pool)):
                    texts = {lang: pool.texts[lang][i] for lang in pool.langs}
                    yield split, pool.images[i], texts, pool.scenes[i]

        return gen(), stats
    n_val = preset["data"]["val_size"]

    def gen():
        if Path(data).is_dir():
            from vilg.app.data.user import iter_folder

            it = ((img, text) for img, text in iter_folder(data, size, stats))
        else:
            st = S.ShardStream(
                data, functools.partial(S.decode_image, size=size), shuffle_buffer=1, epochs=1
            )
            it = (
                (x["sample"]["image"], x["sample"]["text"])
                for x in S.loader(st, workers)
                if _counted(x, stats)
            )
        n = 0  # every 10th sample is held out for validation, up to val_size of them
        for k, (img, text) in enumerate(it):
            split = "val" if k % 10 == 0 and n < n_val else "train"
            n += split == "val"
            yield split, np.asarray(img), {"raw": text}, None

    return gen(), stats


def _counted(item, stats) -> bool:
    stats["ok" if item["sample"] is not None else "skipped"] += 1
    return item["sample"] is not None


def prepare(
    run: str | Path,
    out: str | Path,
    data: str | None = None,
    *,
    per_shard: int = 1000,
    batch: int = 256,
    device="cpu",
    workers: int = 0,
    seed: int = 0,
    log=print,
) -> dict:
    """Encode a data source with `run`'s image tokenizer into code shards under `out`."""
    run, out = Path(run), Path(out)
    preset = ckpt.load_json(run / "preset.json")
    if not (run / "tokenizer" / "model.safetensors").exists():
        raise ckpt.CheckpointError(f"{run} has no trained image tokenizer (vilg train --stages vq)")
    if (out / MARKER).exists():
        raise ValueError(f"{out} already holds prepared shards; choose another --out")
    vq = load_image_tokenizer(run).to(device)
    tok = TextTokenizer.load(run / "tokenizer.json")
    samples, stats = _source_samples(preset, data, seed, workers)
    counts = {"train": 0, "val": 0}
    max_tokens = 0
    pending: list = []

    def flush(writers):
        x = torch.from_numpy(np.stack([p[1] for p in pending])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            codes = vq.encode(x.to(device)).flatten(1).cpu().numpy().astype(np.int16)
        for (split, _, texts, scene), c in zip(pending, codes):
            rec = {"__key__": f"{counts[split]:09d}", "codes.npy": c}
            for lang, t in texts.items():
                rec["txt" if lang in ("raw", "en") else f"{lang}.txt"] = t
            if scene is not None:
                rec["scene.json"] = json.dumps([[o.cell, o.shape, o.color, o.size] for o in scene])
            writers[split].write(S.encode_record(rec))
            counts[split] += 1
        pending.clear()

    with contextlib.ExitStack() as stack:
        writers = {
            split: stack.enter_context(S.shard_writer(out / split, per_shard))
            for split in ("train", "val")
        }
        for s in samples:
            max_tokens = max(max_tokens, *(len(tok.encode(t)) for t in s[2].values()))
            pending.append(s)
            if len(pending) == batch:
                flush(writers)
        if pending:
            flush(writers)
    if not counts["train"]:
        raise ValueError(f"no usable training samples in {data or 'shapes'} ({dict(stats)})")
    info = {
        "run": str(run.resolve()),
        "source": data,
        "image_size": vq.cfg.image_size,
        "grid": list(vq.cfg.grid),
        "codebook_size": vq.cfg.codebook_size,
        "langs": ["en", "zh"] if data is None else ["raw"],
        "max_text_tokens": max_tokens,
        "samples": counts,
        "skipped": int(stats.get("skipped", 0)),
    }
    ckpt.atomic_write_json(out / MARKER, info)
    log(f"prepared {counts} samples into {out} (skipped {info['skipped']})")
    return info


# ------------------------------------------------------------------ training


def decode_prepared(s: dict) -> dict:
    """A prepared sample: codes, captions by language, and the scene (shapes) or None."""
    out = S.decode_codes(s)
    texts = {"raw": out["text"]} if "zh.txt" not in s else {"en": out["text"]}
    if "zh.txt" in s:
        texts["zh"] = s["zh.txt"].decode("utf-8").strip()
    scene = None
    if "scene.json" in s:
        scene = tuple(shapes.Obj(*o) for o in json.loads(s["scene.json"]))
    return {"key": out["key"], "codes": out["codes"], "texts": texts, "scene": scene}


def batch_pool(samples: list[dict]) -> tuple[Pool, torch.Tensor]:
    """A pool (no pixels) and the codes of a list of decoded prepared samples."""
    langs = list(samples[0]["texts"])
    texts = {lang: [s["texts"][lang] for s in samples] for lang in langs}
    scenes = [s["scene"] for s in samples] if samples[0]["scene"] is not None else None
    images = np.zeros((len(samples), 1, 1, 3), np.uint8)  # the generator reads codes only
    return Pool(images, texts, scenes), torch.from_numpy(np.stack([s["codes"] for s in samples]))


def load_split(folder: Path) -> tuple[Pool, torch.Tensor]:
    """Every sample of a (small) split, in memory: the validation set."""
    st = S.ShardStream(S.shard_paths(str(folder / "*.tar")), decode_prepared,
                       shuffle_buffer=1, epochs=1)  # fmt: skip
    samples = [x["sample"] for x in st if x["sample"] is not None]
    if not samples:
        raise ValueError(f"no samples in {folder}")
    return batch_pool(samples)


class ShardGeneratorTrainer(GeneratorTrainer):
    """The generator trained from prepared shards: every micro-batch takes batch_size / world
    items of this rank's stream; the loss shares are normalised by the global row / token
    counts (summed over the ranks), so the ranks' gradients average to the global batch's."""

    def __init__(self, model, cfg, out_dir, shards: str, val: Pool, val_codes, tok, *,
                 workers: int = 0, shuffle_buffer: int = 1000, dist=None, **kw):  # fmt: skip
        world = dist.world if dist is not None else 1
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} does not split over {world} ranks")
        self.per_rank, self.workers, self.buffer = cfg.batch_size // world, workers, shuffle_buffer
        self.shards = S.shard_paths(shards)
        self.position: tuple[int, int] = (0, 0)
        self.stream_stats = S.StreamStats()
        self._items = None
        super().__init__(model, cfg, out_dir, val, val_codes, val, val_codes, tok, dist=dist, **kw)

    def _next_items(self) -> list[dict]:
        if self._items is None:  # started lazily: after a resume has set the position
            d = self.dist
            st = S.ShardStream(
                self.shards,
                decode_prepared,
                seed=self.cfg.seed,
                rank=0 if d is None else d.rank,
                world=1 if d is None else d.world,
                shuffle_buffer=self.buffer,
                start=self.position,
            )
            self._items = iter(S.loader(st, self.workers))
        items = [next(self._items) for _ in range(self.per_rank)]
        self.position = tuple(items[-1]["next"])
        return items

    def loss(self, step, micro):
        items = self._next_items()
        good = [x["sample"] for x in items if self.stream_stats.count(x)]
        if not good:
            raise ValueError(f"all {len(items)} samples of a micro-batch are corrupt: {items}")
        pool, codes = batch_pool(good)
        cap_ids = {lang: [self.tok.encode(t) for t in ts] for lang, ts in pool.texts.items()}
        rank = 0 if self.dist is None else self.dist.rank
        rng = np.random.default_rng([self.cfg.seed, step, micro, rank])
        batches = self.make_batches(
            pool, codes, cap_ids, np.arange(len(good)), rng, fracs=self.fracs_at(step)
        )
        norm = None
        if self.dist is not None:
            t2i, cap, vqa = batches
            local = {
                "img": 0 if t2i is None else t2i["target"].numel(),
                "cap": 0 if cap is None else int(cap["mask"].sum()),
                "vqa": 0 if vqa is None else int(vqa["mask"].sum()),
            }
            norm = {k: int(v) for k, v in D.all_sum(local).items()}
        r = self.stream_losses(*batches, norm=norm)
        logs = {k: r[k].detach() for k in ("img", "cap", "vqa") if r[k] is not None}
        return self.total(r), logs, len(good)

    def extra_state(self):
        return {
            "data_position": list(self.position),
            # this rank's counts (rank 0 writes the state)
            "samples_ok": self.stream_stats.ok,
            "samples_corrupt": self.stream_stats.corrupt,
        }

    def load_extra_state(self, state):
        if "data_position" in state:
            self.position = tuple(state["data_position"])
            self.stream_stats.ok = state.get("samples_ok", 0)
            self.stream_stats.corrupt = state.get("samples_corrupt", 0)
            self._items = None


def train_from_prepared(
    preset: dict,
    out: str | Path,
    data: str,
    *,
    device="cpu",
    seed: int = 0,
    progress: bool = True,
    log=print,
    dist: D.DistInfo | None = None,
    workers: int = 0,
) -> dict:
    """The generator stage of run `out`, from shards `vilg prepare` made with its tokenizer."""
    import time

    from vilg.app.model.transformer import GPTConfig, UnifiedTransformer

    out, data = Path(out), Path(data)
    info = ckpt.load_json(data / MARKER)
    if Path(info["run"]) != out.resolve():
        raise ValueError(
            f"{data} holds codes of {info['run']}'s image tokenizer; train into that --out"
        )
    prev = ckpt.load_json(out / "preset.json")
    if {k: v for k, v in prev.items() if k not in ("data_source", "end2end", "timings")} != {
        k: v for k, v in preset.items() if k != "end2end"
    }:
        raise ckpt.CheckpointError(f"{out} was trained with a different recipe")
    gen_dir = out / "generator"
    if (gen_dir / "model.safetensors").exists():
        log(f"{gen_dir} is already trained")
        return {}
    t0 = time.perf_counter()
    tok = TextTokenizer.load(out / "tokenizer.json")
    vq = load_image_tokenizer(out)
    val, val_codes = load_split(data / "val")
    gcfg = GPTConfig(
        text_vocab=tok.vocab_size,
        image_vocab=info["codebook_size"],
        text_len=preset.get("text_len", min(max(info["max_text_tokens"] + 8, 16), 128)),
        grid=tuple(info["grid"]),
        **preset["generator"]["model"],
    )
    ShardGeneratorTrainer(
        UnifiedTransformer(gcfg),
        train_config(preset, "generator", seed, progress and (dist is None or dist.is_main)),
        gen_dir,
        str(data / "train" / "*.tar"),
        val,
        val_codes,
        tok,
        vq=vq,
        device=D.device_for(dist, device),
        workers=workers,
        dist=dist,
        **preset["generator"].get("tasks", {}),
    ).fit()
    return {"generator_from_shards": round(time.perf_counter() - t0, 1)}
