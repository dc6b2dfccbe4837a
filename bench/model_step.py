"""The ERNIE-ViLG model trained on vilg's sparse attention vs dense attention under the same
masks (issue #19; the paper: row / column sparse attention trained ~25% faster with ~50% less
GPU memory than dense, same loss curve).

One UnifiedTransformer config, three attention backends (GPTConfig.attn_impl):
  vilg   vilg.ops.sparse_attention (the default)
  sdpa   torch SDPA with the layout's dense boolean mask (per-sample text padding included);
         on the CPU torch runs it as its flash kernel (_scaled_dot_product_flash_attention_
         for_cpu) after turning the mask into an additive float [B, 1, L, L] one
  eager  softmax(q k^T * scale + mask) v, the scores materialised (the paper's dense baseline)
Each backend trains its own copy of the *same* initial weights on the *same* batches (random
tokens from a small fixed pool, so the loss falls as the pool is memorised), the backends
alternating in chunks of steps with the order rotating every round, so a shared machine's
drifting load hits all alike. Recorded per backend: step time (median, best, after warm-up),
attention's share of the step, peak memory of a step, the loss curve; ratios vilg vs each
dense backend are printed and written with everything else to bench/results/ (JSON + PNG).

Attention time: the forward timed around each attention call (q, k, v in, output out:
dense-mask assembly included), the backward from the moment the attention output's gradient
arrives to the last of the q, k, v gradients (hooks; a block's attention backward nodes run
back to back). Peak memory: on a GPU torch.cuda.max_memory_allocated over a step minus the
memory allocated before it; on the CPU a fresh process per backend, glibc told to return
every freed block >= 64 KiB to the OS (MALLOC_MMAP_THRESHOLD_), so its resident set follows
live memory, and the kernel's peak resident set (VmHWM, reset through /proc/self/clear_refs)
over one forward + backward minus the resident set before it (weights and zeroed gradients in
place; the optimizer's update needs less than the backward, the same for every backend).
Also the bytes autograd saves for backward in a forward (the activation memory;
saved_tensors_hooks over each backend's first step, each storage once).

    python bench/model_step.py                         # the issue's config (long on a CPU)
    python bench/model_step.py --steps 20 --chunk 4    # fewer steps
    python bench/model_step.py --quick                 # tiny smoke run (seconds)
    python bench/model_step.py --device cuda           # bf16 autocast

The file is in sections: shared setup (config, data), training (bench_training and its
helpers), plotting, main. Another workload (e.g. generation) adds its own section and a key
beside "training" in the result document.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import thread_note, write_results  # noqa: E402

from vilg.app.model.transformer import I2T, T2I, GPTConfig, UnifiedTransformer  # noqa: E402

IMPLS = ("vilg", "sdpa", "eager")
MiB = 2**20

# ====================================================================== shared setup


def model_config(args, impl: str = "vilg") -> GPTConfig:
    return GPTConfig(
        text_vocab=args.text_vocab,
        image_vocab=args.image_vocab,
        text_len=args.text_len,
        grid=(args.grid, args.grid),
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.hidden,
        attn_impl=impl,
    )


def make_batches(cfg: GPTConfig, args) -> list[dict]:
    """`args.pool` batches of random tokens; text padded to text_len (pad id 0), real lengths
    drawn from [text_len // 4, text_len] so the masks' per-sample padding is exercised."""
    g = torch.Generator().manual_seed(args.seed + 1)
    T, N, B = cfg.text_len, cfg.n_image, args.batch
    out = []
    for _ in range(args.pool):
        lens = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)
        text = torch.randint(2, cfg.text_vocab, (B, T), generator=g)
        text[torch.arange(T)[None] >= lens[:, None]] = 0
        image = torch.randint(0, cfg.image_vocab, (B, N), generator=g)
        out.append({"text": text, "lens": lens, "image": image})
    return out


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def build_models(args, device) -> tuple[dict, list[dict]]:
    """{impl: (model, optimizer)} from one set of initial weights, and the batch pool."""
    torch.manual_seed(args.seed)
    base = UnifiedTransformer(model_config(args))
    state = copy.deepcopy(base.state_dict())
    runs = {}
    for impl in args.impls:
        model = UnifiedTransformer(replace(base.cfg, attn_impl=impl))
        model.load_state_dict(state)
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        runs[impl] = (model, opt)
    batches = [to_device(b, device) for b in make_batches(base.cfg, args)]
    return runs, batches


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ====================================================================== training


def loss_of(model: UnifiedTransformer, batch: dict, directions) -> torch.Tensor:
    """Summed next-token loss over `directions` (the paper trains both, summed)."""
    text, lens, image = batch["text"], batch["lens"], batch["image"]
    T, total = text.shape[1], 0.0
    for d in directions:
        if d == T2I:  # image input [BOI, t_0 .. t_{n-2}] predicts t_0 .. t_{n-1}
            inp = torch.cat([torch.full_like(image[:, :1], model.boi), image[:, :-1]], 1)
            h = model(T2I, text, inp, text_lens=lens)
            logits = model.image_logits(model.split(T2I, h, T)[1])
            total = total + F.cross_entropy(logits.flatten(0, 1).float(), image.flatten())
        else:  # text input [BOS=1, w_0 .. w_{m-2}] predicts w_0 .. w_{m-1}; padding ignored
            inp = torch.cat([torch.ones_like(text[:, :1]), text[:, :-1]], 1)
            target = text.masked_fill(
                torch.arange(T, device=text.device)[None] >= lens[:, None], -100
            )
            h = model(I2T, inp, image)
            logits = model.text_logits(model.split(I2T, h, T)[0])
            total = total + F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
    return total


def train_step(model, opt, batch, directions, device, saved: dict | None = None) -> float:
    """One AdamW step; with `saved`, the storages autograd saves for backward are recorded in
    it ({(device, pointer): bytes}, the weights left out)."""
    # gradients kept allocated between steps (zeroed, not freed): a step's peak memory above
    # its start is then the activations and temporaries, alike for every backend
    opt.zero_grad(set_to_none=False)
    loss = forward_loss(model, batch, directions, device, saved)
    loss.backward()
    opt.step()
    return float(loss.detach())


def forward_loss(model, batch, directions, device, saved: dict | None = None):
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if saved is None:
        with amp:
            return loss_of(model, batch, directions)
    weights = {(p.device, p.untyped_storage().data_ptr()) for p in model.parameters()}

    def pack(t):
        st = t.untyped_storage()
        key = (st.device, st.data_ptr())
        if key not in weights:
            saved[key] = st.nbytes()
        return t

    with amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return loss_of(model, batch, directions)


class AttentionClock:
    """Seconds in the attention calls of `model` (forward and backward), while `on`.

    Wraps each block's Attention.attend; the backward is timed from the attention output's
    gradient to the last of q's, k's, v's (autograd runs one node at a time, and a block's
    attention nodes come next once its output gradient exists)."""

    def __init__(self, model, device):
        self.device, self.on, self.fwd, self.bwd = device, False, 0.0, 0.0
        for blk in model.blocks:
            blk.attn.attend = self._wrap(blk.attn.attend)

    def reset(self, on: bool) -> None:
        self.on, self.fwd, self.bwd = on, 0.0, 0.0

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def _wrap(self, attend):
        def timed(q, k, v, layout, text_lens):
            if not self.on:
                return attend(q, k, v, layout, text_lens)
            t0 = self._now()
            y = attend(q, k, v, layout, text_lens)
            self.fwd += self._now() - t0
            if y.requires_grad:
                state = {"left": 3}

                def start(grad):
                    state["t0"] = self._now()

                def done(grad):
                    state["left"] -= 1
                    if state["left"] == 0:
                        self.bwd += self._now() - state["t0"]

                y.register_hook(start)
                for t in (q, k, v):
                    t.register_hook(done)
            return y

        return timed


def _summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "best": min(xs), "worst": max(xs)}


def bench_training(args, device) -> dict:
    """Train every backend from the same weights on the same batches, alternating in chunks.
    Returns per-backend numbers, loss curves and the vilg ratios."""
    runs, batches = build_models(args, device)
    directions = args.directions
    saved = {impl: {} for impl in runs}  # filled by each backend's first step
    clocks = {impl: AttentionClock(m, device) for impl, (m, _) in runs.items()}
    rec = {impl: {"loss": [], "step_s": [], "attn_fwd_s": [], "attn_bwd_s": []} for impl in runs}
    rec_clocked = {impl: [] for impl in runs}  # step times of clocked steps (GPU: synced)
    gpu_peak = {impl: [] for impl in runs}
    done = dict.fromkeys(runs, 0)
    order = list(runs)
    t_start = time.perf_counter()
    rnd = 0
    while min(done.values()) < args.steps:
        for impl in order[rnd % len(order) :] + order[: rnd % len(order)]:
            model, opt = runs[impl]
            for _ in range(min(args.chunk, args.steps - done[impl])):
                i = done[impl]
                # on the CPU the clock costs nothing (no sync): every step; on a GPU its
                # syncs would slow the step, so only the last step of each chunk (every
                # other step with chunks of 1), and those are left out of the step times
                clocked = device.type == "cpu" or (i + 1) % max(2, args.chunk) == 0
                clocks[impl].reset(clocked)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                sync(device)
                t0 = time.perf_counter()
                batch = batches[i % len(batches)]
                loss = train_step(
                    model, opt, batch, directions, device, saved[impl] if i == 0 else None
                )
                sync(device)
                dt = time.perf_counter() - t0
                if device.type == "cuda":
                    gpu_peak[impl].append(torch.cuda.max_memory_allocated(device) - before)
                r = rec[impl]
                r["loss"].append(loss)
                if i >= args.warmup:
                    if device.type == "cpu" or not clocked:
                        r["step_s"].append(dt)
                    if clocked:
                        r["attn_fwd_s"].append(clocks[impl].fwd)
                        r["attn_bwd_s"].append(clocks[impl].bwd)
                        rec_clocked[impl].append(dt)
                done[impl] += 1
            release_freed_memory()
            if not args.quiet:
                r = rec[impl]
                print(
                    f"[{time.perf_counter() - t_start:7.0f} s] {impl:5s} step {done[impl]:4d}"
                    f"  loss {r['loss'][-1]:.4f}  last step {dt:.3f} s",
                    flush=True,
                )
        rnd += 1
    for c in clocks.values():
        c.reset(False)

    memory = (
        {
            impl: {"peak_bytes": max(v), "method": "cuda max_memory_allocated"}
            for impl, v in gpu_peak.items()
        }
        if device.type == "cuda"
        else cpu_memory_probes(args, list(runs))
    )
    per = {}
    for impl, r in rec.items():
        attn = [f + b for f, b in zip(r["attn_fwd_s"], r["attn_bwd_s"])]
        shares = [a / s for a, s in zip(attn, rec_clocked[impl])]
        per[impl] = {
            "step_s": _summary(r["step_s"]),
            "attention_fwd_s": _summary(r["attn_fwd_s"]),
            "attention_bwd_s": _summary(r["attn_bwd_s"]),
            "attention_s": _summary(attn),
            "attention_share": _summary(shares),
            "memory": memory[impl],
            "saved_activation_bytes": sum(saved[impl].values()),
            "loss": r["loss"],
        }
    return {"backends": per, "ratios": ratios(per), "wall_s": time.perf_counter() - t_start}


def release_freed_memory() -> None:
    """Hand memory the allocator keeps after a chunk back to the OS (glibc malloc_trim):
    backends then start their chunks alike, and three models' leftovers do not pile up on a
    shared machine."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def ratios(per: dict) -> dict:
    """vilg against each dense backend: speedup (their time / vilg's) and memory."""
    out = {}
    if "vilg" not in per:
        return out
    v = per["vilg"]
    for other in per:
        if other == "vilg":
            continue
        o = per[other]
        row = {}
        for stat in ("median", "best"):
            a, b = o["step_s"].get(stat), v["step_s"].get(stat)
            row[f"step_speedup_{stat}"] = a / b if a and b else None
        pv, po = v["memory"].get("peak_bytes"), o["memory"].get("peak_bytes")
        if pv and po:
            row["peak_memory_ratio"] = pv / po
            row["peak_memory_less"] = 1 - pv / po
        sv, so = v["saved_activation_bytes"], o["saved_activation_bytes"]
        row["saved_activation_less"] = 1 - sv / so if so else None
        lv, lo = v["loss"], o["loss"]
        n = min(len(lv), len(lo))
        row["loss_max_abs_diff"] = max((abs(a - b) for a, b in zip(lv[:n], lo[:n])), default=None)
        out[f"vilg_vs_{other}"] = row
    return out


# ---------------------------------------------------------------- CPU peak memory (subprocess)

_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # every large free goes back to the OS


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class _RssSampler:
    """Fallback where VmHWM cannot be reset: peak of /proc/self/statm sampled every ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        page = os.sysconf("SC_PAGE_SIZE")

        def run():
            while not self._stop.is_set():
                rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
                self.peak = max(self.peak, rss)
                time.sleep(0.001)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def memory_probe_main(args) -> None:
    """In the fresh process: weights and zeroed gradients in place, the peak resident set of
    one forward + backward above the resident set before it (the optimizer's update needs less
    than the backward and alike for every backend). Prints one JSON line."""
    device = torch.device("cpu")
    args.impls = [args.memory_probe]
    runs, batches = build_models(args, device)
    model, _ = runs[args.memory_probe]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    base = _status_kib("VmRSS") * 1024
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        method, sampler = "VmHWM (reset via clear_refs) - VmRSS before", None
    except OSError:
        method, sampler = "sampled /proc/self/statm peak - RSS before", _RssSampler()
    forward_loss(model, batches[0], args.directions, device).backward()
    peak = sampler.stop() if sampler else _status_kib("VmHWM") * 1024
    method += "; one forward + backward, fresh process, " + " ".join(
        f"{k}={v}" for k, v in _PROBE_ENV.items()
    )
    print(json.dumps({"peak_bytes": peak - base, "rss_before": base, "method": method}))


def cpu_memory_probes(args, impls: list[str]) -> dict:
    """One fresh process per backend, one after the other (side by side they could together
    exhaust a shared machine's memory)."""
    env = {**os.environ, **_PROBE_ENV}
    me = str(Path(__file__).resolve())
    out = {}
    for impl in impls:
        p = subprocess.run(
            [sys.executable, me, *args.argv, "--memory-probe", impl],
            capture_output=True,
            text=True,
            env=env,
        )
        try:
            out[impl] = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            print(f"memory probe for {impl} failed: {p.stderr[-2000:]}", file=sys.stderr)
            out[impl] = {"error": p.stderr[-2000:]}
        if not args.quiet:
            print(f"{impl} peak memory: {out[impl]}", flush=True)
    return out


# ====================================================================== plotting


def plot_training(doc: dict, out: Path) -> None:
    """Loss curves side by side; step time (attention part shaded) and peak memory bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = doc["training"]["backends"]
    impls = list(per)
    colors = dict(zip(IMPLS, ("tab:blue", "tab:orange", "tab:green")))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for impl in impls:
        loss = per[impl]["loss"]
        ax.plot(range(1, len(loss) + 1), loss, label=impl, color=colors.get(impl), lw=1.2)
    ax.set(title="training loss (same weights, same batches)", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[1]
    med = [per[i]["step_s"].get("median", 0) for i in impls]
    attn = [per[i]["attention_s"].get("median", 0) for i in impls]
    best = [per[i]["step_s"].get("best", 0) for i in impls]
    ax.bar(impls, med, color=[colors.get(i) for i in impls], alpha=0.55, label="step (median)")
    ax.bar(impls, attn, color=[colors.get(i) for i in impls], hatch="//", label="attention")
    ax.scatter(impls, best, color="k", marker="_", s=400, zorder=3, label="step (best)")
    ax.set(title="time per training step", ylabel="seconds")
    ax.legend(fontsize=8)

    ax = axes[2]
    peak = [per[i]["memory"].get("peak_bytes", 0) / MiB for i in impls]
    saved = [per[i]["saved_activation_bytes"] / MiB for i in impls]
    x = range(len(impls))
    ax.bar([j - 0.2 for j in x], peak, 0.4, color=[colors.get(i) for i in impls], label="peak")
    ax.bar([j + 0.2 for j in x], saved, 0.4, color="grey", label="saved for backward")
    ax.set_xticks(list(x), impls)
    ax.set(title="memory of a step above its start", ylabel="MiB")
    ax.legend(fontsize=8)
    c = doc["config"]
    fig.suptitle(
        f"{doc['device']}, torch {doc['torch']}, {doc['commit']}: {c['layers']} layers, "
        f"hidden {c['hidden']}, {c['heads']} heads, {c['text_len']} text + {c['grid']}x"
        f"{c['grid']} image tokens, batch {c['batch']}, {'+'.join(c['directions'])}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


# ====================================================================== main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text-vocab", type=int, default=1024)
    ap.add_argument("--image-vocab", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200, help="training steps per backend")
    ap.add_argument("--chunk", type=int, default=5, help="steps per backend per round")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of timing")
    ap.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument(
        "--directions", default=T2I, help="comma list: text2image, image2text (losses summed)"
    )
    ap.add_argument(
        "--generate",
        action="store_true",
        help="also text->image generation of the whole grid with this model: ms/token and "
        "images/s, vilg decode vs dense SDPA decode (bench/generation.py)",
    )
    ap.add_argument("--no-train", action="store_true", help="skip the training benchmark")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (the PNG goes beside it)")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(raw)
    if args.quick:
        args.layers, args.hidden, args.heads, args.text_len, args.grid = 2, 64, 2, 16, 8
        args.batch, args.steps, args.chunk, args.warmup, args.pool = 2, 4, 2, 1, 2
        args.text_vocab = args.image_vocab = 64
    args.impls = args.impls.split(",")
    args.directions = args.directions.split(",")
    bad = set(args.impls) - set(IMPLS) or set(args.directions) - {T2I, I2T}
    if bad:
        ap.error(f"unknown backend / direction: {sorted(bad)}")
    # the memory probe re-runs this file with the same flags (output ones dropped)
    args.argv = [a for a in raw if a not in ("--no-plot", "--quiet")]
    if "--out" in args.argv:
        j = args.argv.index("--out")
        del args.argv[j : j + 2]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe_main(args)
        return {}
    device = torch.device(args.device)
    thread_note(device)
    config = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "quiet", "no_plot", "memory_probe", "argv")
    }
    config["threads"] = torch.get_num_threads()
    config["dtype"] = "bf16 autocast" if device.type == "cuda" else "fp32"
    config["data"] = "random tokens, a fixed pool of batches cycled; text padded (lens T/4..T)"

    extra = {}
    if not args.no_train:
        training = bench_training(args, device)
        report_training(training)
        extra["timing"] = (
            "perf_counter per training step (forward, backward, AdamW), backends "
            "alternating in chunks; median and best after warm-up"
        )
        extra["training"] = training
    if args.generate:
        extra["generation"] = bench_generation(args, device)
    path = write_results("model_step", device, config, [], args.out)
    doc = json.loads(path.read_text())
    del doc["rows"]
    doc.update(extra)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    if not args.no_plot and "training" in doc:
        png = path.with_suffix(".png")
        plot_training(doc, png)
        print(f"wrote {png}")
    return doc


# ====================================================================== generation


def bench_generation(args, device) -> dict:
    """The same model shape generating the whole grid (bench/generation.py: vilg's decode,
    eager and compiled / CUDA graph, against a dense SDPA decode; greedy, alternating rounds)."""
    import generation

    gen_args = generation.parser().parse_args(
        [
            "--device", str(device), "--layers", str(args.layers), "--hidden", str(args.hidden),
            "--heads", str(args.heads), "--grid", str(args.grid),
            "--text-len", str(args.text_len), "--codes", str(args.image_vocab),
            "--batch", str(args.batch), "--rounds", "1" if args.quick else "2",
            "--dtype", "bfloat16" if device.type == "cuda" else "float32",
        ]
        + (["--modes", "checked", "vilg", "sdpa"] if args.quick else [])
    )  # fmt: skip
    res = generation.run(gen_args)
    return {"config": res["config"], "modes": res["batches"][str(args.batch)]}


def report_training(training: dict) -> None:
    print()
    print("backend   step median   step best   attention share   peak memory   saved for bwd")
    for impl, r in training["backends"].items():
        peak = r["memory"].get("peak_bytes")
        print(
            f"{impl:7s}  {r['step_s'].get('median', float('nan')):10.3f} s"
            f"  {r['step_s'].get('best', float('nan')):8.3f} s"
            f"  {100 * r['attention_share'].get('median', float('nan')):15.1f}%"
            f"  {peak / MiB if peak else float('nan'):9.0f} MiB"
            f"  {r['saved_activation_bytes'] / MiB:11.0f} MiB"
        )
    for name, r in training["ratios"].items():
        pm = r.get("peak_memory_less")
        print(
            f"{name}: step {r['step_speedup_median']:.3f}x faster (median), "
            f"{r['step_speedup_best']:.3f}x (best); peak memory "
            + (f"{100 * pm:.1f}% less" if pm is not None else "n/a")
            + f"; saved activations {100 * r['saved_activation_less']:.1f}% less; "
            f"loss curves differ by <= {r['loss_max_abs_diff']:.2e}"
        )


if __name__ == "__main__":
    main()
