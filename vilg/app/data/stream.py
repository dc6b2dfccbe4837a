"""Tar shards streamed with webdataset: one deterministic order per epoch, split by rank and
by DataLoader worker, a seeded shuffle buffer, corrupt samples skipped and counted, and a
position that a checkpoint stores and a resumed run continues from.

Order. Epoch e reads the shards in the permutation that (seed, e) gives, each in tar order,
through a shuffle buffer seeded by (seed, e): the epoch's order is the same in every process,
whatever the numbers of ranks and workers. Position p is the p-th sample of that order.

Split. From a start position p0 the order is cut into rows of `world` samples; sample p
belongs to rank (p - p0) % world, and its row to worker row % workers of that rank. Every
worker reads every sample (tar reading is cheap; the members are bytes) but decodes only its
own, and a DataLoader takes one item from each worker in turn, so each rank receives its
samples in order. An epoch's last incomplete row is dropped so that every rank takes as many
samples (fewer than `world` samples per epoch).

Position. Each item carries `next`: (epoch, position of the row after its own). When every
rank has consumed the same number of items (the trainer takes a fixed number per step), they
all hold the same `next`, and a run started with `start=next` -- on any number of ranks --
continues with the first sample not yet consumed: no sample twice, none skipped.

Corrupt members (undecodable image, codes or text) still take their position: the item comes
with `sample=None` and the error, and the consumer counts it (`StreamStats`). An unreadable
tar ends that shard early (what was read stays) and is counted in `bad_shards`.
"""

from __future__ import annotations

import glob
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


def shard_paths(pattern: str) -> list[str]:
    """Tar shards from a glob pattern, or several joined with '::' (sorted, deduplicated)."""
    paths = sorted({p for part in pattern.split("::") for p in glob.glob(part)})
    if not paths:
        raise FileNotFoundError(f"no tar shards match {pattern!r}")
    return paths


def epoch_shards(paths: list[str], seed: int, epoch: int) -> list[str]:
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(paths))
    return [paths[i] for i in order]


def _raw_samples(paths: list[str], stats: Counter) -> Iterator[dict]:
    """Samples (dicts of member bytes by extension, plus __key__) of the shards in order."""
    from webdataset import tariterators

    for url in paths:
        try:
            yield from tariterators.tarfile_samples([{"url": url}])
        except Exception as e:  # noqa: BLE001 -- a truncated / unreadable tar: next shard
            stats["bad_shards"] += 1
            warnings.warn(f"unreadable shard {url}: {e}", stacklevel=2)


def shuffled(samples, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of `size` samples driven by `rng` (deterministic for a seed)."""
    buf = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = s
    for j in rng.permutation(len(buf)):
        yield buf[j]


@dataclass
class StreamStats:
    """What a consumer saw: good samples, corrupt ones (by reason) and its position."""

    ok: int = 0
    corrupt: int = 0
    reasons: Counter = field(default_factory=Counter)

    def count(self, item: dict) -> bool:
        if item["sample"] is None:
            self.corrupt += 1
            self.reasons[item["error"]] += 1
            return False
        self.ok += 1
        return True


class ShardStream(torch.utils.data.IterableDataset):
    """Items {"sample", "error", "epoch", "pos", "next"} of this rank, endless over epochs
    (or `epochs` of them), starting at `start` = (epoch, position)."""

    def __init__(
        self,
        shards: str | list[str],
        decode: Callable[[dict], object],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_buffer: int = 256,
        start: tuple[int, int] = (0, 0),
        epochs: int | None = None,
    ):
        super().__init__()
        self.paths = shard_paths(shards) if isinstance(shards, str) else list(shards)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.decode, self.seed, self.rank, self.world = decode, seed, rank, world
        self.buffer, self.start, self.epochs = shuffle_buffer, tuple(start), epochs
        self.stats: Counter = Counter()  # bad_shards (in this process when workers == 0)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, p0 = self.start
        while self.epochs is None or epoch < self.epochs:
            yield from self._epoch(epoch, p0, worker, workers)
            epoch, p0 = epoch + 1, 0

    def _epoch(self, epoch: int, p0: int, worker: int, workers: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        raw = shuffled(_raw_samples(epoch_shards(self.paths, self.seed, epoch), self.stats),
                       self.buffer, rng)  # fmt: skip
        W = self.world
        held = None  # our sample of the current row, released once the row is complete
        for p, s in enumerate(raw):
            if p < p0:
                continue  # consumed before the checkpoint: read (the order needs it), skip
            row, col = divmod(p - p0, W)
            if col == self.rank and row % workers == worker:
                held = (row, p, s)
            if col == W - 1 and held is not None and held[0] == row:
                yield self._item(epoch, p0, *held)
                held = None

    def _item(self, epoch: int, p0: int, row: int, p: int, s: dict) -> dict:
        out = {"epoch": epoch, "pos": p, "next": (epoch, p0 + (row + 1) * self.world)}
        try:
            out["sample"], out["error"] = self.decode(s), None
        except Exception as e:  # noqa: BLE001 -- corrupt member: counted by the consumer
            out["sample"], out["error"] = None, type(e).__name__
        return out


def loader(stream: ShardStream, workers: int = 0):
    """A DataLoader over the stream, one item at a time; workers decode in parallel and the
    items arrive in the stream's order."""
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, collate_fn=_identity
    )


def _identity(x):
    return x


# ------------------------------------------------------------------ sample formats

TEXT_EXT = "txt"
CODES_EXT = "codes.npy"  # the image tokenizer's codes, int16 [H*W] (written by `vilg prepare`)


def decode_codes(s: dict) -> dict:
    """A prepared sample: its image's codes and its caption (raises on a corrupt member)."""
    import io

    codes = np.load(io.BytesIO(s[CODES_EXT]), allow_pickle=False)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be a 1-d integer array, got {codes.dtype} {codes.shape}")
    return {"key": s["__key__"], "codes": codes.astype(np.int64), "text": _text(s)}


def decode_image(s: dict, size: int) -> dict:
    """A raw sample: its image decoded, resized and centre-cropped to `size`, and caption."""
    from vilg.app.data.user import IMAGE_EXTS, _decode

    ext = next((e for e in s if "." + e in IMAGE_EXTS), None)
    if ext is None:
        raise ValueError("no image member")
    return {"key": s["__key__"], "image": _decode(s[ext], size), "text": _text(s)}


def _text(s: dict) -> str:
    text = s[TEXT_EXT].decode("utf-8").strip()
    if not text:
        raise ValueError("empty caption")
    return text


def encode_record(s: dict) -> dict:
    """A sample for a tar shard: str -> UTF-8, ndarray -> .npy bytes, bytes as they are."""
    import io

    rec = {}
    for k, v in s.items():
        if isinstance(v, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, v, allow_pickle=False)
            v = buf.getvalue()
        elif isinstance(v, str) and k != "__key__":
            v = v.encode("utf-8")
        rec[k] = v
    return rec


def shard_writer(out_dir, per_shard: int = 1000):
    """A webdataset ShardWriter for out_dir/shard-000000.tar, ... (a context manager)."""
    from pathlib import Path

    from webdataset import ShardWriter

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return ShardWriter(str(Path(out_dir) / "shard-%06d.tar"), maxcount=per_shard, verbose=0)


def write_shards(samples, out_dir, per_shard: int = 1000) -> list[str]:
    """Write dicts {"__key__", ext: bytes | str | ndarray} as tar shards; their paths."""
    from pathlib import Path

    with shard_writer(out_dir, per_shard) as w:
        for s in samples:
            w.write(encode_record(s))
    return sorted(str(p) for p in Path(out_dir).glob("shard-*.tar"))
