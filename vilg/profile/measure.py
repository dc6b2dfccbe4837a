"""Measuring one op for `vilg profile`: timing, the work it does, and the roofline probe."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import statistics
import time
from pathlib import Path

import torch

from vilg.profile import machine

# Dense datasheet peaks (TFLOP/s for 16-bit tensor-core math, TB/s of HBM) of the GPUs this
# project targets, matched against torch.cuda.get_device_name.
DATASHEET = {
    "H200": {"bf16_tflops": 989.0, "hbm_tbs": 4.8},
    "H100": {"bf16_tflops": 989.0, "hbm_tbs": 3.35},
    "A100": {"bf16_tflops": 312.0, "hbm_tbs": 2.0},
}

# matmul FLOPs per allowed (query, key) entry and head-dim element: forward QK^T + PV; the
# backward recomputes QK^T, then dP = dO V^T, dV, dK and dQ
ATTN_FLOPS_PER_ENTRY = {"fwd": 4, "bwd": 10, "fwdbwd": 14}


# ---- timing ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls after `warmup` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---- the machine's own limits ---------------------------------------------------------------
def roofline_probe(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> dict:
    """Dense GEMM rate (GFLOP/s, through torch in `dtype`) and copy bandwidth (GB/s)."""
    n = 4096 if device.type == "cuda" else 1024
    gemm_dtype = dtype if device.type == "cuda" else torch.float32  # CPU kernels compute in fp32
    a = torch.randn(n, n, device=device).to(gemm_dtype)
    b = torch.randn(n, n, device=device).to(gemm_dtype)
    reps = _reps_for(lambda: torch.mm(a, b), device, seconds)
    gemm = time_ms(lambda: torch.mm(a, b), device, 2, reps)
    # past the last-level cache (32 MiB on this project's CPU, 50-60 MiB of L2 on a GPU)
    nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    reps = _reps_for(lambda: dst.copy_(src), device, seconds)
    copy_ms = statistics.median(time_ms(lambda: dst.copy_(src), device, 1, reps))
    out = {
        "gemm": f"torch.mm {n}x{n}x{n} {str(gemm_dtype).replace('torch.', '')}",
        "gemm_gflops": 2.0 * n**3 / statistics.median(gemm) / 1e6,
        # the best repeat: on a shared or frequency-scaling machine the steadier ceiling
        "gemm_gflops_best": 2.0 * n**3 / min(gemm) / 1e6,
        "copy": f"copy of {nbytes >> 20} MiB (read + write)",
        "copy_gbs": 2.0 * nbytes / copy_ms / 1e6,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in DATASHEET.items() if k in name), None)
        if peak:
            out["datasheet"] = {"name": name, **peak}
    return out


def _reps_for(fn, device: torch.device, seconds: float) -> int:
    t = statistics.median(time_ms(fn, device, 1, 3)) / 1e3
    return int(min(50, max(3, seconds / max(t, 1e-6))))


# ---- work counted per op --------------------------------------------------------------------
def attention_entries(layout, text_lens: torch.Tensor | None = None, chunk: int = 1024) -> dict:
    """Allowed (query, key) entries summed over the batch (padded text keys removed), and the
    entries of the visited tiles (clipped to the sequence), per (batch, head)."""
    L, bs = layout.seq_len, layout.block_size
    idx = torch.arange(L)
    start, length = layout.text_segment
    batch = [length] if text_lens is None else [int(t) for t in text_lens]
    allowed_per_key = torch.zeros(L, dtype=torch.int64)
    for r0 in range(0, L, chunk):
        q = idx[r0 : r0 + chunk]
        m = torch.as_tensor(layout.mask_mod(q[:, None], idx[None, :]), dtype=torch.bool)
        allowed_per_key += m.expand(q.numel(), L).sum(0)
    useful = 0
    for t in batch:  # keys start+t .. start+length are padding for this sample
        useful += int(allowed_per_key.sum() - allowed_per_key[start + t : start + length].sum())
    a = layout._arrays
    q_of = torch.repeat_interleave(torch.arange(layout.num_blocks), a["q_ptr"].diff().long())
    rows = (L - q_of * bs).clamp(max=bs)
    cols = (L - a["q_kv"].long() * bs).clamp(max=bs)
    visited = int((rows * cols).sum())
    # the CPU kernels' grain: 4x16 blocks of a partial tile with an allowed entry (before text
    # padding), every block of a full one, rows and columns rounded up to 16 inside the sequence
    bits = (a["masks"][..., None] >> torch.arange(64)) & 1  # [masks, bs, words, 64]
    allowed = bits.reshape(bits.shape[0], bs, -1)[:, :, :bs].bool()
    blocks = allowed.reshape(-1, bs // 4, 4, bs // 16, 16).any(4).any(2).sum((1, 2)) * 64
    mid = a["q_mask"].long()
    r16, c16 = (rows + 15) // 16 * 16, (cols + 15) // 16 * 16
    cpu_blocks = int(torch.where(mid < 0, r16 * c16, blocks[mid.clamp(min=0)]).sum())
    return {
        "useful_per_batch": useful,
        "visited": visited,
        "cpu_blocks": cpu_blocks,
        "samples": len(batch),
    }


def tile_stats(layout) -> dict:
    nb = layout.num_blocks
    return {
        "block": layout.block_size,
        "visited": layout.num_tiles,
        "total": nb * nb,
        "full": layout.num_full,
        "partial": layout.num_partial,
        "tile_density": layout.num_tiles / (nb * nb),
    }


# ---- one op, set up and described -----------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {name!r}")
    return dt


def _esize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def setup_attention(a, device, dtype) -> tuple:
    from vilg.layouts import ernie_vilg
    from vilg.ops import sparse_attention

    layout = ernie_vilg(a.kind, a.text, tuple(a.grid), a.direction)
    B, H, D, L = a.batch, a.heads, a.head_dim, layout.seq_len
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    text_lens = None
    if a.text_lens is not None and layout.text_segment[1]:
        text_lens = torch.tensor(a.text_lens, dtype=torch.int32)
        if text_lens.numel() == 1:
            text_lens = text_lens.expand(B).contiguous()
    lens_dev = None if text_lens is None else text_lens.to(device)

    if a.mode == "fwd":

        def fn():
            with torch.no_grad():
                sparse_attention(q, k, v, layout, text_lens=lens_dev)
    else:
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = sparse_attention(qg, kg, vg, layout, text_lens=lens_dev)
        grad = torch.randn_like(out)

        if a.mode == "bwd":

            def fn():
                torch.autograd.grad(out, (qg, kg, vg), grad, retain_graph=True)
        else:

            def fn():
                o = sparse_attention(qg, kg, vg, layout, text_lens=lens_dev)
                torch.autograd.grad(o, (qg, kg, vg), grad)

    ent = attention_entries(layout, text_lens)
    heads = H * (B if text_lens is None else 1)  # useful_per_batch already sums the batch
    per = ATTN_FLOPS_PER_ENTRY[a.mode] * D
    useful = per * ent["useful_per_batch"] * heads
    computed = per * ent["visited"] * B * H
    cpu_computed = per * ent["cpu_blocks"] * B * H
    e = _esize(dtype)
    act = B * H * L * D * e
    nbytes = {"fwd": 4 * act, "bwd": 9 * act, "fwdbwd": 13 * act}[a.mode] + 4 * B * H * L * 2
    work = {
        "flops_useful": useful,
        "flops_computed": computed,
        "entry_density": useful / computed,
        # what the CPU kernels multiply: occupied 4x16 blocks of the visited tiles
        "flops_computed_cpu_blocks": cpu_computed,
        "bytes": nbytes,
        "tiles": tile_stats(layout),
    }
    shape = dict(batch=B, heads=H, head_dim=D, seq_len=L, text=a.text, grid=list(a.grid))
    pattern = dict(kind=a.kind, direction=a.direction, mode=a.mode, text_lens=a.text_lens)
    return fn, work, shape, pattern


def setup_vq(a, device, dtype) -> tuple:
    from vilg.ops import vq_quantize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.tokens, a.dim, generator=g).to(device, dtype)
    cb = torch.randn(a.codes, a.dim, generator=g).to(device, dtype)

    def fn():
        vq_quantize(x, cb)

    flops = 2 * a.tokens * a.codes * a.dim
    nbytes = (a.tokens + a.codes) * a.dim * _esize(dtype) + 8 * a.tokens
    work = {"flops_useful": flops, "flops_computed": flops, "bytes": nbytes}
    return fn, work, dict(tokens=a.tokens, codes=a.codes, dim=a.dim), {}


def setup_decode(a, device, dtype) -> tuple:
    from vilg.layouts import ernie_vilg
    from vilg.ops import decode_attention

    layout = ernie_vilg(a.kind, a.text, tuple(a.grid), a.direction)
    B, H, D, L = a.batch, a.heads, a.head_dim, layout.seq_len
    pos = min(a.pos, L - 1)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, D, generator=g).to(device, dtype)
    kc, vc = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(2))

    def fn():
        decode_attention(q, kc, vc, layout, pos)

    n = layout.keys_for_query(pos).numel()
    e = _esize(dtype)
    work = {
        "flops_useful": 4 * B * H * n * D,
        "flops_computed": 4 * B * H * n * D,
        "bytes": 2 * B * H * n * D * e + 2 * B * H * D * e,
        "keys": n,
    }
    shape = dict(batch=B, heads=H, head_dim=D, seq_len=L, pos=pos)
    return fn, work, shape, dict(kind=a.kind, direction=a.direction)


def setup_sample(a, device, dtype) -> tuple:
    from vilg.ops import sample

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(a.batch, a.vocab, generator=g)).to(device, dtype)

    def fn():
        sample(logits, temperature=1.0, top_k=a.top_k, top_p=a.top_p, seed=0)

    nbytes = a.batch * a.vocab * _esize(dtype) + 8 * a.batch
    work = {"flops_useful": 0, "flops_computed": 0, "bytes": nbytes}
    return fn, work, dict(batch=a.batch, vocab=a.vocab), dict(top_k=a.top_k, top_p=a.top_p)


SETUP = {
    "attention": setup_attention,
    "vq": setup_vq,
    "decode": setup_decode,
    "sample": setup_sample,
}


# ---- the profiler's kernel list -------------------------------------------------------------
def kernel_table(fn, device: torch.device, iters: int, trace: str | None, label: str) -> list:
    """Per-kernel rows from torch.profiler over `iters` calls (custom ops on CPU, CUDA kernels
    too on a GPU); writes the Chrome trace when asked."""
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(iters):
            with record_function(f"{label} #{i}"), _nvtx(device, label):
                fn()
        _sync(device)
    if trace:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    rows = []
    for ev in prof.key_averages():
        dev_us = getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0)
        name = ev.key
        is_vilg = name.startswith("vilg::")
        is_gpu_kernel = str(getattr(ev, "device_type", "")).endswith("CUDA") and dev_us > 0
        if not (is_vilg or is_gpu_kernel):
            continue
        rows.append(
            {
                "name": name,
                "calls": ev.count,
                "cpu_ms_per_call": ev.cpu_time_total / 1e3 / max(ev.count, 1),
                "device_ms_per_call": dev_us / 1e3 / max(ev.count, 1) if dev_us else None,
            }
        )
    rows.sort(key=lambda r: -(r["device_ms_per_call"] or r["cpu_ms_per_call"]) * r["calls"])
    return rows


@contextlib.contextmanager
def _nvtx(device: torch.device, label: str):
    if device.type != "cuda":
        yield
        return
    torch.cuda.nvtx.range_push(label)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def ncu_once(fn, device: torch.device, warmup: int) -> None:
    """One launch between cudaProfilerStart/Stop, after warm-up, for ncu --profile-from-start
    off."""
    if device.type != "cuda":
        raise ValueError("--ncu needs --device cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    torch.cuda.profiler.start()
    with _nvtx(device, "vilg.profile ncu"):
        fn()
    torch.cuda.synchronize(device)
    torch.cuda.profiler.stop()


# ---- the whole profile ----------------------------------------------------------------------
def profile(a) -> dict:
    device, dtype = torch.device(a.device), _dtype(a.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device")
    fn, work, shape, pattern = SETUP[a.op](a, device, dtype)
    label = f"vilg.profile {a.op} " + " ".join(f"{k}={v}" for k, v in pattern.items())
    if a.ncu:
        ncu_once(fn, device, a.warmup)
        return {"op": a.op, "ncu": "one launch profiled"}
    times = time_ms(fn, device, a.warmup, a.iters)
    kernels = kernel_table(fn, device, min(a.iters, 5), a.trace, label)
    limit = roofline_probe(device, dtype, a.probe_seconds)
    ms = statistics.median(times)
    rate = work["flops_useful"] / ms / 1e6  # GFLOP/s
    gbs = work["bytes"] / ms / 1e6
    intensity = work["flops_useful"] / work["bytes"] if work["bytes"] else 0.0
    roof = min(limit["gemm_gflops"], intensity * limit["copy_gbs"]) if intensity else None
    doc = {
        "op": a.op,
        "pattern": pattern,
        "shape": shape,
        "dtype": a.dtype,
        "device": device.type,
        "device_name": machine.device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "time_ms": {"median": ms, "min": min(times), "iters": len(times)},
        "kernels": kernels,
        **{k: v for k, v in work.items()},
        "gflops_useful": rate,
        "gflops_computed": work["flops_computed"] / ms / 1e6,
        "gbs": gbs,
        "intensity_flop_per_byte": intensity,
        "limit": limit,
        "pct_of_gemm": 100 * rate / limit["gemm_gflops"] if work["flops_useful"] else None,
        # best op repeat against the best probe repeat: both sides least disturbed
        "pct_of_gemm_best": 100
        * work["flops_useful"]
        / min(times)
        / 1e6
        / limit["gemm_gflops_best"]
        if work["flops_useful"]
        else None,
        "pct_of_bandwidth": 100 * gbs / limit["copy_gbs"],
        "pct_of_roofline": 100 * rate / roof if roof else 100 * gbs / limit["copy_gbs"],
        "meta": _meta(),
    }
    return doc


def _meta() -> dict:
    import vilg

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": machine.git_commit(),
        "torch": torch.__version__,
        "vilg": vilg.build_info(),
        "cpus": os.cpu_count(),
        "load_average": machine.load_average(),
    }


def format_table(doc: dict) -> str:
    """The human-readable summary of one profile."""
    lines = [
        f"{doc['op']} {doc['pattern']} {doc['shape']} {doc['dtype']} on {doc['device_name']}"
        + (f" ({doc['threads']} threads)" if doc.get("threads") else ""),
        f"  time           {doc['time_ms']['median']:.3f} ms (median of {doc['time_ms']['iters']},"
        f" min {doc['time_ms']['min']:.3f})",
    ]
    if doc["flops_useful"]:
        lines += [
            f"  useful         {doc['flops_useful'] / 1e9:.3f} GFLOP -> "
            f"{doc['gflops_useful']:.1f} GFLOP/s ({doc['pct_of_gemm']:.0f}% of the GEMM probe; "
            f"best repeats: {doc['pct_of_gemm_best']:.0f}%)",
            f"  computed       {doc['flops_computed'] / 1e9:.3f} GFLOP -> "
            f"{doc['gflops_computed']:.1f} GFLOP/s (visited tiles)",
        ]
    if doc.get("flops_computed_cpu_blocks") and doc["device"] == "cpu":
        blk = doc["flops_computed_cpu_blocks"]
        lines.append(
            f"  CPU blocks     {blk / 1e9:.3f} GFLOP -> {blk / doc['time_ms']['median'] / 1e6:.1f}"
            f" GFLOP/s (occupied 4x16 blocks, {100 * doc['flops_useful'] / blk:.0f}% useful)"
        )
    lines.append(
        f"  bytes          {doc['bytes'] / 1e6:.2f} MB -> {doc['gbs']:.1f} GB/s "
        f"({doc['pct_of_bandwidth']:.0f}% of the copy probe)"
    )
    if "tiles" in doc:
        t = doc["tiles"]
        lines.append(
            f"  tiles          {t['visited']}/{t['total']} visited ({t['full']} full, "
            f"{t['partial']} partial), {100 * doc['entry_density']:.0f}% of visited entries "
            "allowed"
        )
    lim = doc["limit"]
    lines.append(
        f"  machine        GEMM {lim['gemm_gflops']:.1f} GFLOP/s ({lim['gemm']}), copy "
        f"{lim['copy_gbs']:.1f} GB/s; {doc['pct_of_roofline']:.0f}% of the roofline"
    )
    if "datasheet" in lim:
        ds = lim["datasheet"]
        lines.append(f"  datasheet      {ds['bf16_tflops']} TFLOP/s bf16, {ds['hbm_tbs']} TB/s")
    for k in doc["kernels"]:
        dev = k["device_ms_per_call"]
        lines.append(
            f"  kernel         {k['name']}: {k['calls']} calls, {k['cpu_ms_per_call']:.3f} ms"
            + (f" host, {dev:.3f} ms device" if dev else "")
            + " per call"
        )
    return "\n".join(lines)
