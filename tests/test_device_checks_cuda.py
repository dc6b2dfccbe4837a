"""On a GPU, bad values fail loudly without a host sync, eagerly and inside a CUDA graph: each
case runs in its own process (a device-side assertion ends the process's CUDA context), makes
the call with sync debugging set to "error" (a sync inside the call would raise there instead),
then synchronises, which must fail with a device-side assertion. The same values on the CPU:
tests/test_device_checks.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import vilg

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and vilg.build_info()["cuda"]),
        reason="needs a CUDA GPU and vilg built with CUDA",
    ),
]

SETUP = """
import math, torch
import vilg.ops as O
from vilg.layouts import ernie_vilg
layout = ernie_vilg("row", 4, (2, 2), direction="text2image")
L = layout.seq_len
cuda = lambda v: torch.tensor(v, device="cuda")
q = torch.randn(2, 2, L, 32, device="cuda", dtype=torch.float16)
k1 = torch.randn(1, 2, L, 64, device="cuda", dtype=torch.float16)
cb = torch.randn(10, 8, device="cuda")
x = torch.randn(2, 8, device="cuda")
logits = torch.randn(3, 100, device="cuda")
inf = torch.full_like(logits, math.inf)
good, bad_text, bad_key, bad_dec = cuda([2, 4]), cuda([2, 5]), cuda([-1, L]), cuda([9])
bad_idx, neg_idx = cuda([1, 10]), cuda([0, -3])
# warm up with good values (layout arrays and buffers reach the device once, which syncs)
O.sparse_attention(q, q, q, layout, text_lens=good)
O.sparse_attention(q, q, q, layout, key_lens=good)
O.decode_attention(k1[:, :, 5], k1, k1, layout, 5, text_lens=good[:1])
O.sample(logits, top_k=5)
O.vq_embed(good, cb)
O.vq_code_stats(good, x, 10)
torch.cuda.synchronize()
"""

# name: (the call, whether it runs under sync debugging "error": a sync inside the call, the
# check's or anything else's, fails the case before its assertion can)
CASES = {
    "text_lens": ("O.sparse_attention(q, q, q, layout, text_lens=bad_text)", True),
    "key_lens": ("O.sparse_attention(q, q, q, layout, key_lens=bad_key)", True),
    "decode_text_lens": (
        "O.decode_attention(k1[:, :, 5], k1, k1, layout, 5, text_lens=bad_dec)",
        True,
    ),
    "sample_nan": ("logits[1] = math.nan\nO.sample(logits, top_k=5)", True),
    "sample_nan_cfg": ("O.sample(inf, uncond=inf.clone(), cfg_scale=2.0)", True),
    "vq_embed": ("O.vq_embed(bad_idx, cb)", True),
    "vq_code_stats": ("O.vq_code_stats(neg_idx, x, 10)", True),
    # captured with good logits; the bad ones arrive between replays
    "sample_graph": (
        """
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        tok = O.sample(logits, seed=1)
    g.replay()
    s.synchronize()
    logits.fill_(math.nan)
    g.replay()
""",
        False,  # capturing synchronises by design; a replay never does
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_values_assert_on_the_device(case):
    call, no_sync = CASES[case]
    mode = "error" if no_sync else "default"
    code = (
        SETUP
        + f'torch.cuda.set_sync_debug_mode("{mode}")\n'
        + textwrap.dedent(call)
        + """
torch.cuda.set_sync_debug_mode("default")
print("CALL RETURNED", flush=True)
torch.cuda.synchronize()
print("NO ERROR", flush=True)
"""
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert "CALL RETURNED" in run.stdout, out[-3000:]  # no sync (or other error) in the call
    assert "NO ERROR" not in run.stdout and run.returncode != 0, out[-3000:]
    assert "device-side assert" in out, out[-3000:]


def test_good_values_pass_without_sync():
    code = SETUP + textwrap.dedent(
        """
torch.cuda.set_sync_debug_mode("error")
O.sparse_attention(q, q, q, layout, text_lens=good)
O.decode_attention(k1[:, :, 5], k1, k1, layout, 5, text_lens=good[:1])
logits[1, :99] = math.nan
O.sample(logits)
O.vq_embed(good, cb)
O.vq_code_stats(good, x, 10)
torch.cuda.set_sync_debug_mode("default")
torch.cuda.synchronize()
print("OK", flush=True)
"""
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "OK" in run.stdout, (run.stdout + run.stderr)[-3000:]
