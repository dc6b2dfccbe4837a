"""Layout builds leave torch's process-wide thread count alone, and keep each mask evaluation
under torch's intra-op grain size, so that its small ops run on the calling thread."""

import threading

import pytest
import torch

from vilg.layouts import Layout, ernie_vilg


def test_build_never_sets_the_thread_count(monkeypatch):
    def refuse(n):
        raise AssertionError(f"a layout build called torch.set_num_threads({n})")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    before = torch.get_num_threads()
    Layout.from_mask_mod(lambda q, k: k <= q, 700)
    ernie_vilg("conv", 64, (32, 32))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_mask_pieces_stay_under_the_grain_size(block):
    sizes = []

    def mod(q, k):
        sizes.append(q.shape[0] * k.shape[1])
        return (k <= q) & (q - k < 300)

    lay = Layout.from_mask_mod(mod, 1500, block_size=block)
    assert sizes and max(sizes) < 32768
    ref = Layout.from_dense(lay.dense_mask(), block_size=block)
    assert torch.equal(lay.dense_mask(), ref.dense_mask())
    assert lay.num_tiles == ref.num_tiles and lay.num_partial == ref.num_partial


def test_concurrent_builds_agree():
    out = {}

    def build(i):
        out[i] = Layout.from_mask_mod(lambda q, k: (q - k).abs() <= 40 + i, 400)

    workers = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, lay in out.items():
        idx = torch.arange(400)
        want = (idx[:, None] - idx[None, :]).abs() <= 40 + i
        assert torch.equal(lay.dense_mask(), want)
