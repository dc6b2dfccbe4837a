import itertools

import pytest
import torch
from reference import spec_mask

from vilg.layouts import KINDS, Layout, ernie_vilg, schedule

GRIDS = [(4, 4), (5, 7), (3, 6)]
DIRECTIONS = ("text2image", "image2text", "vqa")


def _answer(direction):
    return 4 if direction == "vqa" else 0


@pytest.mark.parametrize("kind,direction,grid", list(itertools.product(KINDS, DIRECTIONS, GRIDS)))
def test_dense_mask_matches_spec(kind, direction, grid):
    A = _answer(direction)
    lay = ernie_vilg(kind, 5, grid, direction, window=3, answer_len=A)
    assert lay.seq_len == 5 + grid[0] * grid[1] + A
    assert torch.equal(lay.dense_mask(), spec_mask(kind, 5, grid, direction, 3, A))


def test_vqa_layout_without_answer_is_the_bidirectional_source():
    lay = ernie_vilg("row", 4, (3, 3), "vqa")
    assert lay.dense_mask()[:4].all()  # question sees question and image
    with pytest.raises(ValueError, match="answer_len"):
        ernie_vilg("row", 4, (3, 3), "image2text", answer_len=2)


def test_default_window_is_eleven():
    lay = ernie_vilg("conv", 3, (13, 13))
    assert torch.equal(lay.dense_mask(), spec_mask("conv", 3, (13, 13), "text2image", 11))


def _unpack(lay: Layout) -> torch.Tensor:
    """Dense mask in kernel order rebuilt from the block-sparse arrays alone."""
    q_ptr, q_kv, q_mask, k_ptr, k_q, k_mask, masks, _ = lay.kernel_arrays("cpu")
    bs, nb = lay.block_size, lay.num_blocks
    out = torch.zeros(nb * bs, nb * bs, dtype=torch.bool)
    bits = torch.arange(64)
    for qb in range(nb):
        for e in range(int(q_ptr[qb]), int(q_ptr[qb + 1])):
            kb, mid = int(q_kv[e]), int(q_mask[e])
            if mid < 0:
                tile = torch.ones(bs, bs, dtype=torch.bool)
            else:
                words = masks[mid]  # [bs, words]
                tile = ((words[..., None] >> bits) & 1).bool().reshape(bs, -1)[:, :bs]
            out[qb * bs : (qb + 1) * bs, kb * bs : (kb + 1) * bs] = tile
    return out[: lay.seq_len, : lay.seq_len]


@pytest.mark.parametrize("kind,direction", list(itertools.product(KINDS, DIRECTIONS)))
@pytest.mark.parametrize("block", [16, 32, 64])
def test_block_sparse_form_reproduces_mask(kind, direction, block):
    lay = ernie_vilg(
        kind, 9, (6, 7), direction, window=5, block_size=block, answer_len=3 * _answer(direction)
    )
    order = lay._arrays["perm"]
    dense = lay.dense_mask()
    if order is not None:
        dense = dense[order.long()][:, order.long()]
    assert torch.equal(_unpack(lay), dense)


@pytest.mark.parametrize("kind", KINDS)
def test_csc_lists_the_same_tiles(kind):
    lay = ernie_vilg(kind, 10, (8, 8), block_size=16)
    q_ptr, q_kv, q_mask, k_ptr, k_q, k_mask, _, _ = lay.kernel_arrays("cpu")
    csr = {
        (qb, int(q_kv[e])): int(q_mask[e])
        for qb in range(lay.num_blocks)
        for e in range(int(q_ptr[qb]), int(q_ptr[qb + 1]))
    }
    csc = {
        (int(k_q[e]), kb): int(k_mask[e])
        for kb in range(lay.num_blocks)
        for e in range(int(k_ptr[kb]), int(k_ptr[kb + 1]))
    }
    assert csr == csc
    for kb in range(lay.num_blocks):  # query tiles ascending within each key tile
        qs = k_q[int(k_ptr[kb]) : int(k_ptr[kb + 1])]
        assert torch.all(qs[1:] > qs[:-1])


def test_sparse_patterns_skip_most_tiles():
    # ERNIE-ViLG's 32x32 grid with 64 text tokens: row/column attention visit few tiles
    for kind in ("row", "column"):
        lay = ernie_vilg(kind, 64, (32, 32))
        assert lay.density < 0.2, (kind, lay)
    assert ernie_vilg("full", 64, (32, 32)).density > 0.5


def test_column_runs_on_the_transposed_grid():
    lay = ernie_vilg("column", 4, (3, 5))
    perm = lay._arrays["perm"].tolist()
    assert perm[:4] == [0, 1, 2, 3]  # text untouched
    assert perm[4:7] == [4, 9, 14]  # first column, top to bottom
    assert lay.kernel_text_segment == (0, 4)


def test_schedule():
    assert schedule(1) == ["conv"]
    assert schedule(6) == ["row", "row", "column", "row", "row", "conv"]
    assert schedule(8)[6] == "column" and schedule(8)[-1] == "conv"
    with pytest.raises(ValueError):
        schedule(0)


def test_from_dense_and_mask_mod_agree(gen):
    L = 45
    dense = torch.rand(L, L, generator=gen) < 0.3
    a = Layout.from_dense(dense, block_size=16)
    assert torch.equal(a.dense_mask(), dense)
    assert torch.equal(_unpack(a), dense)
    b = Layout.from_mask_mod(lambda q, k: (q - k).abs() <= 2, L, block_size=16)
    c = Layout.from_mask_mod(lambda b_, h, q, k: (q - k).abs() <= 2, L, block_size=16)
    band = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).abs() <= 2
    assert torch.equal(b.dense_mask(), band) and torch.equal(c.dense_mask(), band)
    assert b.num_tiles == 3 * b.num_blocks - 2


def test_partial_masks_are_deduplicated():
    lay = ernie_vilg("conv", 0, (32, 32), window=3, block_size=32)
    assert lay._arrays["masks"].shape[0] < lay.num_partial


def test_keys_for_query():
    lay = ernie_vilg("row", 4, (3, 3))
    assert lay.keys_for_query(4 + 4).tolist() == [0, 1, 2, 3, 7, 8]  # row 1, col 1, causal
    lay2 = ernie_vilg("column", 4, (3, 3), direction="image2text")
    assert lay2.keys_for_query(4).tolist() == [1, 4, 7]
    with pytest.raises(ValueError):
        lay.keys_for_query(lay.seq_len)


def test_draw(tmp_path):
    from PIL import Image

    path = tmp_path / "row.png"
    ernie_vilg("row", 8, (6, 6)).draw(path)
    img = Image.open(path)
    assert img.size[0] == img.size[1] >= 44


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="diagonal", text_len=4, grid=(3, 3)),
        dict(kind="row", text_len=4, grid=(3, 3), direction="sideways"),
        dict(kind="conv", text_len=4, grid=(3, 3), window=4),
        dict(kind="row", text_len=-1, grid=(3, 3)),
        dict(kind="row", text_len=4, grid=(0, 3)),
        dict(kind="row", text_len=4, grid=(3, 3), block_size=48),
    ],
)
def test_bad_layout_arguments(kwargs):
    with pytest.raises(ValueError):
        ernie_vilg(**kwargs)


def test_bad_dense_mask():
    with pytest.raises(ValueError):
        Layout.from_dense(torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        Layout.from_dense(torch.ones(3, 3))
