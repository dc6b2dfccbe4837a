"""Checks an installed vilg (run by tests/test_wheel.py and scripts/torch_matrix.py with a wheel's
venv, outside the source tree; also usable by hand on a GPU machine:
`python tests/wheel_check.py [cpu] [cuda]`).

Every kernel against a dense float64 reference, forward and backward; one OpenMP runtime shared
with torch; the ops under torch.compile(fullgraph=True) where this torch and Python support it;
a transformers model on vilg attention where transformers is installed. Prints one JSON line
with what was checked and what was skipped (and why); exits non-zero on any mismatch."""

from __future__ import annotations

import copy
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


def compile_unsupported() -> str | None:
    """Why torch.compile cannot run here, or None: torch's own support matrix (dynamo before
    torch 2.6 refuses Python 3.13), asked of torch rather than restated."""
    try:
        torch.compile(lambda x: x + 1, backend="eager", fullgraph=True)(torch.ones(1))
    except RuntimeError as e:
        if "not supported" in str(e):
            return str(e).splitlines()[0]
        raise
    return None


def check_compile(device: str) -> list[str]:
    """The custom ops through dynamo and AOTAutograd (fake tensors, the registered autograd),
    fullgraph so a graph break fails; aot_eager needs no C++ compiler in the venv."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    layout = ernie_vilg("row", 8, (8, 8), direction="text2image", window=3, block_size=16)
    L = layout.seq_len
    q, k, v = (torch.randn(2, 2, L, 32, generator=g).to(device).requires_grad_() for _ in range(3))
    cb = torch.randn(37, 32, generator=g).to(device).requires_grad_()

    def step(q, k, v, cb):
        out = ops.sparse_attention(q, k, v, layout)
        idx = ops.vq_quantize(out.detach().reshape(-1, 32), cb.detach())
        emb = ops.vq_embed(idx, cb)
        tok = ops.sample(out[:, 0, :, :8].reshape(-1, 8).detach(), top_k=4, seed=3)
        return out, emb, idx, tok

    fn = torch.compile(step, backend="aot_eager", fullgraph=True)
    got, want = fn(q, k, v, cb), step(q, k, v, cb)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    go = torch.randn(got[0].shape, generator=g).to(device)
    ge = torch.randn(got[1].shape, generator=g).to(device)
    args = (q, k, v, cb)  # one backward: the compiled graph is one autograd node
    grads = torch.autograd.grad((got[0] * go).sum() + (got[1] * ge).sum(), args)
    ref = torch.autograd.grad((want[0] * go).sum() + (want[1] * ge).sum(), args)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    kc, vc = k.detach(), v.detach()
    plan = ops.DecodePlan(layout, kc, vc)
    pos = torch.tensor([L - 5], device=device)
    dec = torch.compile(plan, backend="aot_eager", fullgraph=True)(q[:, :, L - 5].detach(), pos)
    torch.testing.assert_close(dec, plan(q[:, :, L - 5].detach(), L - 5), rtol=1e-5, atol=1e-5)
    return ["compile(fullgraph) attention+vq+sample fwd+bwd", "compile(fullgraph) DecodePlan"]


def check_transformers(device: str) -> list[str]:
    """A 2-layer Llama from a config on vilg attention (causal layout, right padding) against
    the same weights on sdpa in float64: logits and every parameter gradient."""
    import transformers

    import vilg.integrations.transformers as vt
    from vilg.layouts import causal

    vt.register("vilg_wheel_check", layout_fn=lambda n: causal(n, block_size=16))
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    auto = transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(copy.deepcopy(cfg), attn_implementation="vilg_wheel_check")
    ref = auto.from_config(copy.deepcopy(cfg), attn_implementation="sdpa").double()
    ref.load_state_dict(model.state_dict())
    model, ref = model.to(device), ref.to(device)
    ids = torch.randint(0, 97, (2, 45), generator=torch.Generator().manual_seed(1)).to(device)
    am = torch.ones(2, 45, dtype=torch.long, device=device)
    am[1, 30:] = 0  # right padding
    out = model(input_ids=ids, attention_mask=am).logits
    want = ref(input_ids=ids, attention_mask=am).logits
    keep = am.bool()[..., None].expand_as(out)  # logits at padded positions are not compared
    torch.testing.assert_close(out.double()[keep], want[keep], rtol=1e-4, atol=1e-4)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device) * keep
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-3, atol=1e-4, msg=name)
    return [f"transformers {transformers.__version__} llama fwd+bwd"]


def check_numpy_arrays(device: str) -> list[str]:
    """NumPy arrays in, arrays out (the installed numpy, 1.x or 2.x); CPU arrays only."""
    if device != "cpu":
        return []
    import numpy as np

    g = np.random.default_rng(4)
    layout = ernie_vilg("column", 4, (4, 4), block_size=16)
    q, k, v = (g.standard_normal((1, 2, layout.seq_len, 16), dtype=np.float32) for _ in range(3))
    out = ops.sparse_attention(q, k, v, layout)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, type(out)
    ref = dense(*map(torch.from_numpy, (q, k, v)), layout.dense_mask())
    torch.testing.assert_close(torch.from_numpy(out).double(), ref, rtol=1e-4, atol=1e-4)
    x, cb = (
        g.standard_normal((50, 8), dtype=np.float32),
        g.standard_normal((9, 8), dtype=np.float32),
    )
    idx = ops.vq_quantize(x, cb)
    want = ((x[:, None, :].astype(np.float64) - cb[None]) ** 2).sum(-1).argmin(1)
    assert isinstance(idx, np.ndarray) and (idx == want).all(), "vq_quantize on arrays"
    return ["numpy arrays attention+vq_quantize"]


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
    import numpy

    result = {
        "vilg": vilg.__file__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "checked": [],
        "skipped": {},
    }
    result["openmp"] = check_one_openmp()
    no_compile = compile_unsupported()
    try:
        import transformers  # noqa: F401
    except ImportError:
        no_transformers = "transformers is not installed"
    else:
        no_transformers = None
    for dev in devices:
        result["checked"] += [f"{dev}: {c}" for c in check_attention(dev)]
        result["checked"] += [f"{dev}: {c}" for c in check_vq_and_sample(dev)]
        result["checked"] += [f"{dev}: {c}" for c in check_numpy_arrays(dev)]
        if no_compile is None:
            result["checked"] += [f"{dev}: {c}" for c in check_compile(dev)]
        else:
            result["skipped"][f"{dev}: compile"] = no_compile
        if no_transformers is None:
            result["checked"] += [f"{dev}: {c}" for c in check_transformers(dev)]
        else:
            result["skipped"][f"{dev}: transformers"] = no_transformers
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["cpu"]))
