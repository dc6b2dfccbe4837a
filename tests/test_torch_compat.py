"""What keeps the one wheel working on every torch it claims (docs/compatibility.md).

The op schemas are written out (torch before 2.7 cannot infer them from the string annotations
of `from __future__ import annotations`); here they must equal what this torch infers from the
Python signatures, so the two never drift apart."""

import pytest
import torch

from vilg.ops import attention, decode, sampling, vq

OPS = [
    attention._fwd,
    attention._bwd,
    decode._decode,
    sampling._sample,
    vq._quantize,
    vq._embed,
    vq._code_stats,
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op._name)
def test_written_schema_is_the_inferred_one(op):
    if not hasattr(torch.library, "infer_schema"):
        pytest.skip("torch.library.infer_schema needs torch >= 2.5")
    written = str(op._opoverload._schema).split("::", 1)[1]
    inferred = torch.library.infer_schema(op._init_fn, mutates_args=())
    assert written == op._name + inferred
