"""User data: an image folder with metadata.jsonl, or webdataset-style tar shards.

Both are streamed (one sample at a time); a sample whose image cannot be decoded, whose text
is missing, or whose metadata line is malformed is skipped and counted in `stats`, never
fatal. Images are converted to RGB, resized (shorter side) and centre-cropped to a square.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vilg.app.data.pool import Pool

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return preprocess(im, size)


def iter_folder(root: str | Path, size: int, stats: Counter) -> Iterator[tuple[np.ndarray, str]]:
    """Folder with metadata.jsonl lines {"file_name": ..., "text": ...}."""
    root = Path(root)
    meta = root / "metadata.jsonl"
    if not meta.exists():
        raise FileNotFoundError(
            f'{root} has no metadata.jsonl (lines of {{"file_name": ..., "text": ...}})'
        )
    with open(meta, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name, text = rec["file_name"], rec["text"]
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("empty text")
                img = _decode((root / name).read_bytes(), size)
            except Exception:  # noqa: BLE001 -- any bad line / missing or corrupt file: skip
                stats["skipped"] += 1
                continue
            stats["ok"] += 1
            yield img, text.strip()


def iter_shards(pattern: str, size: int, stats: Counter) -> Iterator[tuple[np.ndarray, str]]:
    """Tar shards (glob pattern or list with ::) holding KEY.jpg|png and KEY.txt members."""
    paths = sorted(p for part in pattern.split("::") for p in glob.glob(part))
    if not paths:
        raise FileNotFoundError(f"no tar shards match {pattern!r}")
    for path in paths:
        group: dict[str, bytes] = {}
        key = None
        try:
            with tarfile.open(path, mode="r|*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    k, _, ext = m.name.partition(".")
                    if key is not None and k != key:
                        yield from _emit(group, size, stats)
                        group = {}
                    key = k
                    group["." + ext.lower()] = tf.extractfile(m).read()
        except Exception:  # noqa: BLE001 -- unreadable / truncated shard: keep what was read
            stats["bad_shards"] += 1
        yield from _emit(group, size, stats)


def _emit(group: dict, size: int, stats: Counter):
    if not group:
        return
    img_key = next((e for e in group if e in IMAGE_EXTS), None)
    try:
        text = group[".txt"].decode("utf-8").strip()
        if img_key is None or not text:
            raise ValueError("incomplete sample")
        img = _decode(group[img_key], size)
    except Exception:  # noqa: BLE001 -- a corrupt sample is skipped and counted
        stats["skipped"] += 1
        return
    stats["ok"] += 1
    yield img, text


def user_pool(source: str, size: int, limit: int | None = None) -> Pool:
    """A pool from a folder (with metadata.jsonl) or tar shards ('data/*.tar')."""
    stats: Counter = Counter()
    it = (
        iter_folder(source, size, stats)
        if Path(source).is_dir()
        else iter_shards(source, size, stats)
    )
    images, texts = [], []
    for img, text in it:
        images.append(img)
        texts.append(text)
        if limit and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"no usable samples in {source} ({dict(stats)})")
    return Pool(np.stack(images), {"raw": texts}, None, dict(stats))
