"""Checks an installed vilg (run by tests/test_wheel.py with a wheel's venv, outside the source
tree; also usable by hand on a GPU machine: `python tests/wheel_check.py [cpu] [cuda]`).

Every kernel against a dense float64 reference, forward and backward; one OpenMP runtime shared
with torch. Prints one JSON line with what was checked; exits non-zero on any mismatch."""

from __future__ import annotations

import json
import math
import os
import sys

import torch

import vilg
from vilg import ops
from vilg.layouts import ernie_vilg


def dense(q, k, v, mask):
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask.to(q.device), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no key give 0
    return p @ v.double()


def check_attention(device: str) -> list[str]:
    done = []
    g = torch.Generator().manual_seed(0)
    for kind, direction in [
        ("row", "text2image"),
        ("column", "text2image"),
        ("conv", "image2text"),
        ("full", "text2image"),
    ]:
        layout = ernie_vilg(kind, 8, (8, 8), direction=direction, window=3, block_size=16)
        L, B, H, D = layout.seq_len, 2, 2, 32
        q, k, v = (
            torch.randn(B, H, L, D, generator=g).to(device).requires_grad_() for _ in range(3)
        )
        out = ops.sparse_attention(q, k, v, layout)
        ref = dense(q, k, v, layout.dense_mask())
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
        go = torch.randn(out.shape, generator=g).to(device)
        grads = torch.autograd.grad(out, (q, k, v), go)
        ref_grads = torch.autograd.grad(ref, (q, k, v), go.double())
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-4)
        pos = L - 3
        dec = ops.decode_attention(q[:, :, pos].detach(), k.detach(), v.detach(), layout, pos)
        torch.testing.assert_close(dec.double(), ref[:, :, pos].detach(), rtol=1e-4, atol=1e-4)
        done.append(f"attention fwd+bwd+decode {kind}/{direction}")
    return done


def check_vq_and_sample(device: str) -> list[str]:
    g = torch.Generator().manual_seed(1)
    x, cb = torch.randn(100, 16, generator=g), torch.randn(37, 16, generator=g)
    idx = ops.vq_quantize(x.to(device), cb.to(device)).cpu()
    assert torch.equal(idx, torch.cdist(x.double(), cb.double()).argmin(1)), "vq_quantize"
    cb_d = cb.to(device).requires_grad_()
    emb = ops.vq_embed(idx.to(device), cb_d)
    emb.sum().backward()
    assert torch.equal(emb.detach().cpu(), cb[idx]), "vq_embed"
    assert torch.equal(
        cb_d.grad.cpu(), torch.bincount(idx, minlength=37)[:, None].float().expand(37, 16)
    ), "vq_embed backward"
    logits = torch.full((4, 50), -1e4)
    logits[torch.arange(4), torch.tensor([3, 7, 11, 49])] = 10.0
    tok = ops.sample(logits.to(device), top_k=1, seed=5).cpu()
    assert tok.tolist() == [3, 7, 11, 49], tok
    return ["vq_quantize", "vq_embed fwd+bwd", "sample"]


def openmp_runtimes() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted({ln.split()[-1] for ln in f if "gomp" in ln.split()[-1]})


def check_one_openmp() -> dict:
    # torch.set_num_threads must reach vilg's kernels: true only if both use one libgomp
    torch.set_num_threads(3)
    assert vilg._ext.C().build_info()["openmp_max_threads"] == 3, "vilg has its own OpenMP"
    torch.randn(512, 512) @ torch.randn(512, 512)  # start torch's thread pool
    before = len(os.listdir("/proc/self/task"))
    check_attention("cpu")  # vilg's kernels on 3 threads: a second runtime would add threads
    after = len(os.listdir("/proc/self/task"))
    libs = openmp_runtimes()
    assert len(libs) == 1, f"OpenMP runtimes mapped: {libs}"
    assert after == before, f"threads {before} -> {after} during vilg kernels"
    return {"libgomp": libs[0], "threads": after}


def main(devices: list[str]) -> int:
    result = {"vilg": vilg.__file__, "torch": torch.__version__, "checked": []}
    result["openmp"] = check_one_openmp()
    for dev in devices:
        result["checked"] += [f"{dev}: {c}" for c in check_attention(dev)]
        result["checked"] += [f"{dev}: {c}" for c in check_vq_and_sample(dev)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["cpu"]))
