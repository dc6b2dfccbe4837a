"""FlexAttention interop: Layout <-> BlockMask, and equal outputs on the CPU."""

import pytest
import torch
from reference import rel_err

from vilg.layouts import Layout, ernie_vilg, neighborhood_2d, sliding_window
from vilg.ops import sparse_attention

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def _sliding(b, h, q, kv):
    return (kv <= q) & (q - kv < 9)


@pytest.mark.parametrize("L,block", [(100, 16), (257, 128), (64, 32)])
def test_from_block_mask_matches_its_mask(L, block):
    bm = flex.create_block_mask(_sliding, None, None, L, L, device="cpu", BLOCK_SIZE=block)
    lay = Layout.from_block_mask(bm, block_size=16)
    i = torch.arange(L)
    want = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 9)
    assert torch.equal(lay.dense_mask(), want)
    assert "from_block_mask" in repr(lay)


def test_from_block_mask_of_kv_blocks_only():
    # a BlockMask made from block indices alone (no mask_mod): listed blocks are all allowed
    nq = 3
    num = torch.tensor([[[1, 2, 1]]], dtype=torch.int32)
    idx = torch.tensor([[[[0, 0, 0], [0, 2, 0], [1, 0, 0]]]], dtype=torch.int32)
    bm = flex.BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=16, seq_lengths=(48, 48))
    want = torch.zeros(nq, nq, dtype=torch.bool)
    want[0, 0] = want[1, 0] = want[1, 2] = want[2, 1] = True
    want = want.repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert torch.equal(Layout.from_block_mask(bm, block_size=16).dense_mask(), want)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    "make",
    [
        lambda: sliding_window(90, 17, block_size=16),
        lambda: neighborhood_2d((7, 9), 3, prefix=1, block_size=16),
        lambda: ernie_vilg("column", 5, (4, 6), block_size=16),
    ],
)
def test_to_block_mask_and_flex_attention_agree(gen, make):
    lay = make()
    bm = lay.to_block_mask(BLOCK_SIZE=32)
    assert torch.equal(Layout.from_block_mask(bm, block_size=16).dense_mask(), lay.dense_mask())
    q, k, v = (torch.randn(2, 2, lay.seq_len, 16, generator=gen) for _ in range(3))
    want = flex.flex_attention(q, k, v, block_mask=bm)
    assert rel_err(sparse_attention(q, k, v, lay), want) < 1e-5


def test_block_mask_errors():
    bm = flex.create_block_mask(_sliding, None, None, 32, 48, device="cpu", BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="equal query and key lengths"):
        Layout.from_block_mask(bm)

    def per_batch(b, h, q, kv):
        return (kv <= q) | (b > 0)

    bm = flex.create_block_mask(per_batch, 2, None, 40, 40, device="cpu", BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="differs across batch"):
        Layout.from_block_mask(bm)
