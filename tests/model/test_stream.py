"""Streamed tar shards: rank / worker split, exact resume of the data position, corrupt
members skipped and counted."""

import io
import tarfile
from collections import Counter

import numpy as np
import pytest

from vilg.app.data import stream as S

N = 30  # 3 shards of 10


def _samples(n=N, start=0):
    for i in range(start, start + n):
        yield {"__key__": f"{i:05d}", "txt": f"caption {i}", "codes.npy": np.full(4, i, np.int16)}


@pytest.fixture
def shards(tmp_path):
    return S.write_shards(_samples(), tmp_path / "shards", per_shard=10)


def _stream(paths, **kw):
    return S.ShardStream(paths, S.decode_codes, seed=3, shuffle_buffer=8, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_an_epoch_is_one_order_split_over_the_ranks(shards):
    whole = [x["sample"]["key"] for x in _stream(shards, epochs=1)]
    assert sorted(whole) == [f"{i:05d}" for i in range(N)]
    assert whole != sorted(whole)  # shuffled: shard order and buffer
    assert whole == [x["sample"]["key"] for x in _stream(shards, epochs=1)]
    other_epoch = [x["sample"]["key"] for x in _stream(shards, start=(1, 0), epochs=2)]
    assert sorted(other_epoch) == sorted(whole) and other_epoch != whole
    for world in (2, 3):
        per_rank = [
            [x["sample"]["key"] for x in _stream(shards, rank=r, world=world, epochs=1)]
            for r in range(world)
        ]
        # row k of the order goes to the ranks in turn
        assert [per_rank[r][k] for k in range(N // world) for r in range(world)] == whole


def test_workers_deliver_the_rank_order(shards):
    want = [x["pos"] for x in _stream(shards, rank=1, world=2, epochs=1)]
    got = [x["pos"] for x in S.loader(_stream(shards, rank=1, world=2, epochs=1), workers=2)]
    assert got == want


@pytest.mark.parametrize("world_after", [1, 2, 4])
def test_a_run_killed_mid_epoch_resumes_at_its_position(shards, world_after):
    """2 ranks take 5 items each, then stop (the checkpoint keeps `next`); the run resumes
    on world_after ranks: over the epoch every sample is seen once."""
    seen = []
    nexts = set()
    for r in range(2):
        items = _take(iter(_stream(shards, rank=r, world=2)), 5)
        seen += [x["sample"]["key"] for x in items]
        nexts.add(items[-1]["next"])
    assert len(nexts) == 1  # every rank holds the same position
    start = nexts.pop()
    assert start == (0, 10)
    for r in range(world_after):
        rest = _stream(shards, rank=r, world=world_after, start=start, epochs=1)
        seen += [x["sample"]["key"] for x in rest]
    assert Counter(seen) == Counter(f"{i:05d}" for i in range(N))  # none twice, none skipped
    # and the order goes on where it stopped: the same samples as the uninterrupted order
    whole = [x["sample"]["key"] for x in _stream(shards, epochs=1)]
    resumed = [x["sample"]["key"] for x in _stream(shards, start=start, epochs=1)]
    assert resumed == whole[10:]


def test_the_position_runs_on_into_the_next_epoch(shards):
    it = iter(_stream(shards))
    items = _take(it, N + 3)
    assert [x["epoch"] for x in items] == [0] * N + [1] * 3
    assert items[N - 1]["next"] == (0, N) and items[-1]["next"] == (1, 3)
    resumed = _take(iter(_stream(shards, start=(0, N))), 3)
    assert [x["sample"]["key"] for x in resumed] == [x["sample"]["key"] for x in items[N:]]


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = S.write_shards(_samples(10), tmp_path / "good", per_shard=10)
    npy = io.BytesIO()
    np.save(npy, np.arange(4, dtype=np.int16))
    _tar(
        tmp_path / "bad.tar",
        [
            ("a.txt", b"fine"),
            ("a.codes.npy", npy.getvalue()),
            ("b.txt", b"bad codes"),
            ("b.codes.npy", b"\x93NUMPY garbage"),
            ("c.txt", b"   "),  # empty caption
            ("c.codes.npy", npy.getvalue()),
            ("d.txt", b"no codes"),
        ],
    )
    (tmp_path / "truncated.tar").write_bytes((tmp_path / "bad.tar").read_bytes()[:1500])
    (tmp_path / "garbage.tar").write_bytes(b"not a tar file at all" * 100)
    names = ("bad.tar", "truncated.tar", "garbage.tar")
    paths = good + [str(tmp_path / n) for n in names]
    st = _stream(paths, epochs=1)
    stats = S.StreamStats()
    with pytest.warns(UserWarning, match="unreadable shard"):
        kept = [x["sample"]["key"] for x in st if stats.count(x)]
    assert stats.ok == len(kept) and "a" in kept and not {"b", "c", "d"} & set(kept)
    assert set(stats.reasons) <= {"ValueError", "KeyError", "OSError"}
    assert stats.ok + stats.corrupt == len([x for x in _stream(paths, epochs=1)])
    # webdataset ends a truncated tar quietly: its cut sample arrives incomplete, counted too
    assert stats.corrupt == 4 and stats.reasons["KeyError"] == 2, stats
    assert st.stats["bad_shards"] == 1  # garbage.tar: unreadable, passed over
