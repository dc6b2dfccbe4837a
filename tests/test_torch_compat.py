"""What keeps the one wheel working on every torch it claims (docs/compatibility.md).

The op schemas are written out (torch before 2.7 cannot infer them from the string annotations
of `from __future__ import annotations`); here they must equal what this torch infers from the
Python signatures, so the two never drift apart."""

import importlib.util
import json
import re

import pytest
import torch
from tests_support import ROOT, TORCH_FLOOR

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


def _render_compat():
    spec = importlib.util.spec_from_file_location(
        "render_compat", ROOT / "scripts/render_compat.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compatibility_table_is_current():
    rc = _render_compat()
    assert rc.DOC.read_text() == rc.updated_doc(), "run python scripts/render_compat.py"


def test_matrix_covers_the_declared_floor():
    """The committed matrix starts at pyproject's torch floor, which is CI's TORCH_FLOOR, has
    every minor from there to its newest, spans CPython 3.10-3.13, and every cell passed."""
    floor = re.search(r'"torch>=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())[1]
    assert TORCH_FLOOR.startswith(floor + ".")
    report = json.loads(_render_compat().newest_results().read_text())
    cells = report["cells"]
    minor = sorted({tuple(map(int, c["torch"].split(".")[:2])) for c in cells})
    assert ".".join(map(str, minor[0])) == floor, minor
    assert minor == [(2, m) for m in range(minor[0][1], minor[-1][1] + 1)], "a minor is missing"
    assert {c["python"] for c in cells} == {"3.10", "3.11", "3.12", "3.13"}
    assert [c for c in cells if c["outcome"] != "pass"] == []


def test_flex_attention_missing_says_which_torch(monkeypatch):
    """torch 2.4 has no FlexAttention: the one vilg feature built on it says so."""
    import sys

    from vilg.layouts import causal

    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)
    with pytest.raises(ImportError, match=r"torch >= 2\.5"):
        causal(32, block_size=16).to_block_mask()
