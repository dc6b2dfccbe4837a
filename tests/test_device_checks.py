"""Values the CPU path rejects are rejected on every path: where reading them would sync the
device (CUDA tensors) or break the graph (torch.compile), `_validate.device_check` asserts on
the device instead. On the CPU that assertion raises at once, which is what these tests run;
tests/test_device_checks_cuda.py runs the same inputs on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

import vilg.ops as O
from vilg.layouts import ernie_vilg
from vilg.ops import _validate
from vilg.ops import vq as vq_mod


@pytest.fixture
def as_if_compiling(monkeypatch):
    """The branch torch.compile (and, for CUDA tensors, every call) takes."""
    import torch._dynamo  # noqa: F401  (imported unpatched: it records is_compiling)

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


@pytest.mark.parametrize("bad", [[-1, 3], [3, 9], [2**31 - 1, 0]])
def test_text_lens_out_of_range_assert(as_if_compiling, bad):
    with pytest.raises(RuntimeError, match=r"text_lens values must lie in \[0, 8\]"):
        _validate.text_lens(torch.tensor(bad), 2, 8, torch.device("cpu"))
    got = _validate.text_lens(torch.tensor([0, 8]), 2, 8, torch.device("cpu"))
    assert got.tolist() == [0, 8] and got.dtype == torch.int32


def test_eager_cpu_still_names_the_values():
    with pytest.raises(ValueError, match=r"\[3, 9\]"):
        _validate.text_lens(torch.tensor([3, 9]), 2, 8, torch.device("cpu"))


def test_attention_key_lens_assert_through_the_op(as_if_compiling):
    layout = ernie_vilg("row", 4, (2, 2), direction="text2image")
    L = layout.seq_len
    q = torch.randn(2, 2, L, 32)
    with pytest.raises(RuntimeError, match=rf"key_lens values must lie in \[0, {L}\]"):
        O.sparse_attention(q, q, q, layout, key_lens=torch.tensor([L, L + 1]))
    with pytest.raises(RuntimeError, match=r"text_lens values must lie in \[0, 4\]"):
        O.sparse_attention(q, q, q, layout, text_lens=torch.tensor([-1, 4]))


def test_decode_text_lens_assert(as_if_compiling):
    layout = ernie_vilg("row", 4, (2, 2), direction="text2image")
    k = torch.randn(1, 2, layout.seq_len, 32)
    with pytest.raises(RuntimeError, match="text_lens values must lie"):
        O.decode_attention(k[:, :, 5], k, k, layout, 5, text_lens=torch.tensor([5]))


def test_sample_all_nan_rows_assert(as_if_compiling):
    logits = torch.randn(3, 10)
    logits[1] = math.nan
    with pytest.raises(RuntimeError, match="all NaN"):
        O.sample(logits)
    logits[1, 4] = 0.0  # one entry that is not NaN: a row to draw from
    assert O.sample(logits, temperature=0).tolist()[1] == 4
    # guidance can make a row all NaN: inf - inf
    c = torch.full((1, 4), math.inf)
    with pytest.raises(RuntimeError, match="all NaN"):
        O.sample(c, uncond=c.clone(), cfg_scale=2.0)
    assert _validate.all_nan_rows(c, None, 1.0).tolist() == [False]


def test_vq_error_record_assert():
    vq_mod._assert_no_bad_index(torch.tensor([0, 0]))
    vq_mod._assert_no_bad_index(None)  # the CPU kernels raise themselves
    with pytest.raises(RuntimeError, match="code index was out of range"):
        vq_mod._assert_no_bad_index(torch.tensor([2, 17]))


def test_vq_ops_keep_their_cpu_errors():
    cb = torch.randn(10, 8)
    with pytest.raises(ValueError, match="out of range"):
        O.vq_embed(torch.tensor([1, 10]), cb)
    with pytest.raises(ValueError, match="out of range"):
        O.vq_code_stats(torch.tensor([0, -1]), torch.randn(2, 8), 10)
    assert torch.equal(O.vq_embed(torch.tensor([3]), cb, check=True), cb[[3]])


@pytest.mark.slow
def test_torch_compile_rejects_instead_of_clamping():
    """Under torch.compile the eager CPU check cannot run (data-dependent branch); the kernels
    used to clamp the value silently."""
    layout = ernie_vilg("row", 4, (2, 2), direction="text2image")
    q = torch.randn(1, 2, layout.seq_len, 32)

    @torch.compile(fullgraph=True)
    def f(q, lens):
        return O.sparse_attention(q, q, q, layout, text_lens=lens)

    f(q, torch.tensor([3]))
    with pytest.raises(RuntimeError, match="text_lens values must lie"):
        f(q, torch.tensor([7]))
