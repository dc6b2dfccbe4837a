"""Render every measured table of README.md and docs/ from bench/results/*.json.

A Markdown file asks for a table with a pair of comments:

    <!-- render: dropin -->
    (whatever is here is replaced)
    <!-- /render -->

`python scripts/render_docs.py` rewrites those blocks in place; `--check` changes nothing and
exits 1 naming each stale block (tests/test_docs.py runs it, so a table typed by hand or left
behind by a new results file fails the tests).

Every table says where its numbers come from (the file, and the commit, date, threads and load
average that file recorded) and shows every run or round the file holds, not a chosen one.

To add a table: write a function that returns Markdown, decorate it with `@table("name")`, and
put the two comments where it belongs. `provenance()` writes the source line, `rows_table()`
covers the usual `{"rows": [...]}` files of bench/ in one call. With no code at all,
`<!-- render: file:NAME -->` renders every scalar column of bench/results/NAME.json's rows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BLOCK = re.compile(
    r"(?P<open><!-- render: (?P<name>[\w.:-]+) -->\n)(?P<body>.*?)(?P<close><!-- /render -->)",
    re.S,
)
TABLES: dict[str, Callable[[], str]] = {}


def table(name: str):
    """Register a table renderer under the name its Markdown block uses."""

    def register(fn: Callable[[], str]) -> Callable[[], str]:
        if name in TABLES:
            raise ValueError(f"table {name!r} registered twice")
        TABLES[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# helpers


@cache
def load(name: str) -> dict:
    """A results file by its name (with or without .json)."""
    path = RESULTS / (name if name.endswith(".json") else name + ".json")
    return json.loads(path.read_text())


def loads(load_average) -> str:
    """'4.0 / 4.0 / 5.1': the 1 / 5 / 15-minute load averages a file recorded."""
    if not load_average:
        return "not recorded"
    return " / ".join(f"{v:.1f}" for v in load_average)


def fmt_load(load_average) -> str:
    if not load_average:
        return "load not recorded"
    return f"load average {loads(load_average)} (1 / 5 / 15 min)"


def threads_of(d: dict) -> str:
    if d.get("omp_num_threads"):
        return f"{d['omp_num_threads']} thread(s)"
    m = re.search(r"\((\d+) threads? of", d.get("device", ""))
    return f"{m.group(1)} thread(s)" if m else "threads not recorded"


def provenance(name: str, *, load_average=None, extra: str = "") -> str:
    """The source line under a table: file, commit, date, device, threads, load."""
    d = load(name)
    parts = [f"`bench/results/{name}.json`"]
    if d.get("commit"):
        parts.append(f"commit {d['commit']}")
    if d.get("date"):
        parts.append(str(d["date"]))
    if d.get("device"):
        parts.append(d["device"])
    if d.get("omp_num_threads") and "threads of" not in d.get("device", ""):
        parts.append(threads_of(d))
    parts.append(fmt_load(load_average if load_average is not None else d.get("load_average")))
    line = "Source: " + ", ".join(parts)
    return line + (f"; {extra}" if extra else "") + "."


def md_table(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def s(v) -> str:
    return "–" if v is None else f"{v:.1f} s"


def pct(v, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def gib(v) -> str:
    return f"{v / 2**30:.2f} GiB"


def rows_table(name: str, columns: list[tuple[str, Callable[[dict], object]]], where=None) -> str:
    """A table of a standard results file's `rows`, one column per (header, row -> cell)."""
    rows = [r for r in load(name)["rows"] if where is None or where(r)]
    body = md_table([h for h, _ in columns], [[f(r) for _, f in columns] for r in rows])
    return body + "\n\n" + provenance(name)


def pair(a, b, f=pct) -> str:
    return f"{f(a)} / {f(b)}"


# ---------------------------------------------------------------------------------------------
# kernels


@table("attention")
def _attention() -> str:
    name = "attention-cpu-2026-11-23"
    d = load(name)
    c = d["config"]
    rows = {}
    for r in d["rows"]:
        rows.setdefault((r["grid"], r["kind"]), {})[r["mode"]] = r
    body = md_table(
        [
            "grid",
            "pattern",
            "density",
            "fwd: vilg / SDPA",
            "vs SDPA",
            "fwd+bwd: vilg / SDPA",
            "vs SDPA",
        ],
        [
            [
                g,
                k,
                pct(m["fwd"]["density"], 0),
                f"{ms(m['fwd']['vilg_ms'])} / {ms(m['fwd']['sdpa_ms'])}",
                x(m["fwd"]["vs_sdpa"]),
                f"{ms(m['fwdbwd']['vilg_ms'])} / {ms(m['fwdbwd']['sdpa_ms'])}",
                x(m["fwdbwd"]["vs_sdpa"]),
            ]
            for (g, k), m in rows.items()
        ],
    )
    setup = (
        f"{c['dtype']}, batch {c['batch']}, {c['heads']} heads, head dim {c['dim']}, "
        f"{c['text']} text tokens + the image grid, {c['direction']}; SDPA gets the same "
        f"boolean mask; one run, median of {c['repeat']} calls after {c['warmup']} warm-up"
    )
    return body + "\n\n" + provenance(name, extra=setup)


@table("decode")
def _decode() -> str:
    name = "decode-cpu-2026-11-23"
    steps = rows_table(
        name,
        [
            ("pattern", lambda r: r["kind"]),
            ("batch x heads", lambda r: f"{r['batch']} x {r['heads']}"),
            ("position", lambda r: r["pos"]),
            ("keys read", lambda r: r["keys"]),
            ("vilg", lambda r: ms(r["vilg_ms"])),
            ("dense SDPA over the cache", lambda r: ms(r["anchor_ms"])),
            ("speed-up", lambda r: x(r["speedup"])),
        ],
        where=lambda r: r["op"] == "decode_attention",
    )
    sample = md_table(
        ["`sample`: batch x vocab", "options", "vilg", "torch", "speed-up"],
        [
            [
                f"{r['batch']} x {r['vocab']}",
                ", ".join(f"{k} {v}" for k, v in r["options"].items()),
                ms(r["vilg_ms"]),
                f"{ms(r['anchor_ms'])} ({r['anchor']})",
                x(r["speedup"]),
            ]
            for r in load(name)["rows"]
            if r["op"] == "sample"
        ],
    )
    return steps.replace("\n\nSource", "\n\n" + sample + "\n\nSource")


@table("vq")
def _vq() -> str:
    return rows_table(
        "vq-cpu-2026-11-23",
        [
            ("op", lambda r: f"`{r['op']}`"),
            ("N x K x D", lambda r: f"{r['n']} x {r['k']} x {r['d']}"),
            ("dtype", lambda r: r["dtype"]),
            ("vilg", lambda r: ms(r["vilg_ms"])),
            ("torch", lambda r: f"{ms(r['anchor_ms'])} ({r['anchor']})"),
            ("speed-up", lambda r: x(r["speedup"])),
        ],
    )


PROFILE_LABEL = {
    "attention": "{kind} {mode}",
    "decode": "decode {kind}",
    "vq": "VQ lookup",
    "sample": "sample",
}


def _profile_cell(by_round: dict, i: int) -> str:
    """Round i of one kernel: % of the GEMM probe before -> after (best times if no FLOPs)."""
    b, a = by_round.get((i, "before")), by_round.get((i, "after"))
    if b is None or a is None:
        return "–"
    if b.get("pct_of_gemm_best") is None or a.get("pct_of_gemm_best") is None:
        return f"{ms(b['time_ms']['min'])} → {ms(a['time_ms']['min'])}"
    return f"{b['pct_of_gemm_best']:.0f}% → {a['pct_of_gemm_best']:.0f}%"


@table("profile")
def _profile() -> str:
    """Every round of both thread counts: % of the GEMM probe, before -> after."""
    name = "profile-cpu-2026-11-30"
    d = load(name)
    out = []
    for threads, rounds in d["rounds"].items():
        labels, cells = [], {}
        for i, rnd in enumerate(rounds):
            for side in ("before", "after"):
                for p in rnd[side]["profiles"]:
                    pat = p.get("pattern") or {}
                    label = PROFILE_LABEL[p["op"]].format(
                        kind=pat.get("kind"), mode=pat.get("mode")
                    )
                    if label not in cells:
                        labels.append(label)
                        cells[label] = {}
                    cells[label][(i, side)] = p
        loads = [
            rnd[side]["profiles"][0]["meta"].get("load_average", [None])[0]
            for rnd in rounds
            for side in ("before", "after")
        ]
        commit = rounds[0]["after"]["profiles"][0]["meta"]["commit"]
        header = ["kernel"] + [f"round {i + 1}: before → after" for i in range(len(rounds))]

        out.append(
            f"**{threads}** (commit {commit}; 1-minute load average "
            f"{min(loads):.1f}–{max(loads):.1f} over these rounds)\n"
        )
        out.append(
            md_table(
                header,
                [[lb] + [_profile_cell(cells[lb], i) for i in range(len(rounds))] for lb in labels],
            )
        )
        out.append("")
    out.append(
        "Cells: the op's useful FLOP rate (allowed entries only) at its best repeat, as a share "
        "of the best repeat of a torch GEMM probe measured beside it; `sample` does no FLOPs, so "
        "its cells are best times. " + d["what"] + "."
    )
    out.append("")
    out.append(f"Source: `bench/results/{name}.json`. Its caveat: {d['caveat']}.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# drop-in


DROPIN_RUNS = [  # oldest first; the label says which code ran, the load comes from the file
    ("dropin-cpu-2026-11-30", "first run"),
    ("dropin-cpu-2026-11-30-interleaved", "GQA as split calls, interleaved rounds"),
    ("dropin-cpu-2026-11-30-native-gqa", "native GQA"),
    ("dropin-cpu-2026-11-30-native-gqa-quiet", "native GQA"),
]


def _dropin_rows(name: str, model: str) -> dict[str, dict]:
    return {r["attention"]: r for r in load(name)["rows"] if r["model"] == model}


@table("dropin")
def _dropin() -> str:
    rows = []
    for name, what in DROPIN_RUNS:
        d = load(name)
        for model in ("llama", "vit"):
            r = _dropin_rows(name, model)
            v, sd = r["vilg"], r["sdpa"]
            flex = r.get("flex", {}).get("fwd_x_vs_vilg")
            rows.append(
                [
                    f"{what} (`{name}`, {d['commit']}, {loads(d['load_average'])})",
                    {"llama": "LM", "vit": "ViT"}[model],
                    f"{x(sd['fwd_x_vs_vilg'])} / {x(sd['fwd_bwd_x_vs_vilg'])}",
                    f"{x(v.get('fwd_bound_x'))} / {x(v.get('fwd_bwd_bound_x'))}",
                    x(flex) if flex else "–",
                ]
            )
    c = load(DROPIN_RUNS[-1][0])["config"]
    body = md_table(
        [
            "run (file, commit, load average 1 / 5 / 15 min)",
            "model",
            "SDPA time / vilg time: fwd / fwd+bwd",
            "ceiling: SDPA / no attention",
            "FlexAttention fwd / vilg",
        ],
        rows,
    )
    return body + (
        f"\n\nEvery run: fp32, 2 threads, batch 1, implementations timed in interleaved rounds, "
        f"median of {c['repeat']} after {c['warmup']} warm-up. LM: Mistral-style, hidden "
        f"{c['hidden']}, 8 heads / 2 kv heads, {c['layers']} layers, sequence {c['seq']}, "
        f"sliding window {c['window']}. ViT: hidden {c['vit_hidden']}, 6 heads, {c['layers']} "
        f"layers, {c['grid']}x{c['grid']} patches + CLS, {c['nbhd']}x{c['nbhd']} neighbourhood. "
        "The ceiling replaces attention by zeros: what any attention kernel could give end to "
        "end. FlexAttention (compiled) has no CPU backward. Files under `bench/results/`."
    )


@table("dropin-op")
def _dropin_op() -> str:
    name = DROPIN_RUNS[-1][0]
    rows = []
    for model in ("llama attention op", "vit attention op"):
        r = _dropin_rows(name, model)
        rows.append(
            [
                model.replace("llama", "LM").replace("vit", "ViT"),
                f"{ms(r['vilg']['fwd_ms'])} / {ms(r['vilg']['fwd_bwd_ms'])}",
                f"{ms(r['sdpa']['fwd_ms'])} / {ms(r['sdpa']['fwd_bwd_ms'])}",
                f"{x(r['sdpa']['fwd_x_vs_vilg'])} / {x(r['sdpa']['fwd_bwd_x_vs_vilg'])}",
            ]
        )
    body = md_table(
        ["op alone, same shapes", "vilg fwd / fwd+bwd", "SDPA fwd / fwd+bwd", "SDPA / vilg"], rows
    )
    return body + "\n\n" + provenance(name)


@table("first-call")
def _first_call() -> str:
    return rows_table(
        "first-call-cpu-2026-11-30",
        [
            ("model", lambda r: {"llama": "LM", "vit": "ViT"}[r["model"]]),
            ("mode", lambda r: r["mode"]),
            ("import torch", lambda r: s(r["import_torch_s"])),
            ("import vilg", lambda r: f"{r['import_vilg_s']:.2f} s"),
            ("layout", lambda r: f"{r['layout_s']:.2f} s"),
            ("first call", lambda r: f"{r['first_call_s']:.2f} s"),
            ("second call", lambda r: f"{r['second_call_s']:.2f} s"),
            ("vilg total", lambda r: f"{r['vilg_total_s']:.2f} s"),
            ("torch._dynamo imported", lambda r: "yes" if r["dynamo_imported"] else "no"),
        ],
    )


# ---------------------------------------------------------------------------------------------
# model


MODEL_STEP_RUNS = ["model_step-cpu-2026-11-30", "model_step-cpu-2026-11-30-quiet"]


@table("model-step")
def _model_step() -> str:
    out = []
    for name in MODEL_STEP_RUNS:
        d = load(name)
        c, t = d["config"], d["training"]
        rows = []
        for impl, b in t["backends"].items():
            st = b["step_s"]
            rows.append(
                [
                    impl,
                    f"{st['median']:.1f} s ({st['best']:.1f}–{st['worst']:.1f})",
                    f"{b['attention_s']['median']:.1f} s "
                    f"({pct(b['attention_share']['median'], 0)})",
                    gib(b["memory"]["peak_bytes"]),
                    gib(b["saved_activation_bytes"]),
                ]
            )
        rat = t["ratios"]
        out.append(
            md_table(
                [
                    "backend",
                    f"step: median (best–worst of {st['n']})",
                    "attention per step (share)",
                    "peak memory, fwd+bwd",
                    "saved for backward",
                ],
                rows,
            )
        )
        out.append("")
        out.append(
            f"vilg vs SDPA: {x(rat['vilg_vs_sdpa']['step_speedup_median'])} per step (median), "
            f"{pct(rat['vilg_vs_sdpa']['peak_memory_less'], 0)} less peak memory; vs eager: "
            f"{x(rat['vilg_vs_eager']['step_speedup_median'])}, "
            f"{pct(rat['vilg_vs_eager']['peak_memory_less'], 0)} less. vilg's losses differ from "
            f"the other two backends' by at most "
            f"{max(r['loss_max_abs_diff'] for r in rat.values()):.1e}. "
            + provenance(
                name,
                extra=f"{c['threads']} threads, {c['steps']} steps per backend "
                f"({c['warmup']} warm-up), wall {t['wall_s'] / 60:.0f} min",
            )
        )
        out.append("")
    c = load(MODEL_STEP_RUNS[0])["config"]
    out.append(
        f"Config: {c['layers']} layers, hidden {c['hidden']}, {c['heads']} heads, "
        f"{c['text_len']} text + {c['grid']}x{c['grid']} image tokens, batch {c['batch']}, "
        f"{', '.join(c['directions'])}, {c['dtype']}; each backend trains its own copy of the "
        "same weights on the same batches, alternating step by step."
    )
    return "\n".join(out).rstrip()


@table("generation")
def _generation() -> str:
    name = "generation-cpu-2026-11-30"
    c = load(name)["config"]
    body = rows_table(
        name,
        [
            ("mode", lambda r: f"`{r['mode']}`"),
            (
                "ms / token: median (best)",
                lambda r: f"{r['ms_per_token_median']:.1f} ({r['ms_per_token_best']:.1f})",
            ),
            ("median over all rounds", lambda r: f"{r['ms_per_token_median_all_rounds']:.1f}"),
            ("prefill", lambda r: ms(r["prefill_ms"])),
            ("images / s", lambda r: f"{r['images_per_s']:.2f}"),
            ("same tokens as `vilg`", lambda r: "yes" if r["same_tokens_as_vilg"] else "no"),
        ],
    )
    return body.replace(
        "\n\nSource",
        (
            f"\n\n{c['layers']} layers, hidden {c['hidden']}, {c['heads']} heads, "
            f"{c['grid']}x{c['grid']} grid ({c['tokens']} tokens), {c['codes']} codes, "
            f"batch 8, greedy, {c['dtype']}, {c['rounds']} alternating rounds (the file keeps "
            "their medians, not each round). `checked`: the public op at every step, "
            "full-sequence prefill; "
            "`vilg`: `Stepper` eager; `compile`: the same step under `torch.compile`; `sdpa`: a "
            "dense KV-cache decode under the same masks.\n\nSource"
        ),
    )


SCALING = [
    "scaling-tiny-cpu-2026-11-30",
    "scaling-demo-cpu-2026-11-30",
    "scaling-real-cpu-2026-11-30",
]


@table("scaling")
def _scaling() -> str:
    rows = []
    for name in SCALING:
        d = load(name)
        for r in d["rows"]:
            rows.append(
                [
                    d["config"]["shape"],
                    r["world"],
                    r["mode"],
                    f"{r['samples_per_s']:.2f}",
                    x(r["speedup_vs_1"]),
                    f"`{name}` ({d['commit']}, {loads(d['load_average'])})",
                ]
            )
    return md_table(
        [
            "shape",
            "processes",
            "mode",
            "samples / s",
            "vs 1 process",
            "file (commit, load average 1 / 5 / 15 min)",
        ],
        rows,
    ) + (
        "\n\nCPU, gloo, 1 thread per process on a 2-core machine shared with other jobs: "
        "there is no spare core to gain from, so these rows show that the path works, not how "
        "it scales. Files under `bench/results/`."
    )


def _lang_pair(run: dict, key: str) -> str:
    return pair(run["en"].get(key), run["zh"].get(key))


def _demo_rows(name: str) -> str:
    d = load(name)
    rows = []
    for r in d["runs"]:
        if "en" not in r:
            continue
        by3 = [r[lang].get("caption_exact_by_objects", {}).get("3") for lang in ("en", "zh")]
        rows.append(
            [
                f"`{r['command']}`",
                r["commit"],
                f"{r['wall_s_measured_with_time'] / 60:.1f} min"
                if r.get("wall_s_measured_with_time")
                else "–",
                _lang_pair(r, "images_fully_correct_after_rerank"),
                _lang_pair(r, "caption_exact"),
                _lang_pair(r, "vqa_accuracy"),
                pair(*by3) if by3[0] is not None else "–",
            ]
        )
    return md_table(
        [
            "run",
            "commit",
            "wall",
            "images fully correct (reranked), en / zh",
            "exact captions",
            "VQA",
            "exact captions, 3-object scenes",
        ],
        rows,
    ) + (
        f"\n\nSource: `bench/results/{name}.json`, {d['date']}, {d['device']}"
        f"{'; recipe: ' + d['recipe'] if d.get('recipe') else ''}; load not recorded."
    )


@table("demo-runs")
def _demo_runs() -> str:
    return _demo_rows("model-cpu-2026-11-24-count-mix")


@table("demo-runs-previous")
def _demo_runs_previous() -> str:
    return _demo_rows("model-cpu-2026-11-24")


@table("demo-prompts")
def _demo_prompts() -> str:
    name = "demo-prompts-cpu-2026-12-05"
    d = load(name)
    rows = []
    for r in d["runs"]:
        f = r["figures"]
        for lang in ("en", "zh"):
            g = f[lang]
            rows.append(
                [
                    f"seed {r['seed']}",
                    lang,
                    pair(g["t2i_canonical_before"], g["t2i_canonical_after"]),
                    pair(g["t2i_shuffled_before"], g["t2i_shuffled_after"]),
                    pair(g["t2i_paraphrased_before"], g["t2i_paraphrased_after"]),
                    pct(g["caption_exact"]),
                    pct(g["vqa"]),
                ]
            )
    loads = "; ".join(
        f"seed {r['seed']}: load {' / '.join(r['start']['loadavg'])} at start, "
        f"{' / '.join(r['end']['loadavg'])} at end, {r['time_v']['wall_s']:.0f} s wall"
        for r in d["runs"]
    )
    return md_table(
        [
            "run",
            "lang",
            "text→image canonical (before / after rerank)",
            "shuffled",
            "paraphrased",
            "exact captions",
            "VQA",
        ],
        rows,
    ) + (
        f"\n\nAny-order training on (t2i_shuffle, t2i_paraphrase 0.5), {r['generator_steps']} "
        f"generator steps, {d['threads']}; {loads}. Source: `bench/results/{name}.json` "
        f"(commit {d['commit']}, {d['date']})."
    )


@table("generator-variants")
def _generator_variants() -> str:
    name = "model-cpu-2026-11-24-count-mix"
    g = load(name)["generator_only_variants"]
    rows = [
        [
            r["variant"],
            r["base_seed"],
            pair(*r["caption_exact"]),
            pair(*r["vqa"]),
            pair(*r["caption_exact_3_objects"]),
            pct(r["min"]),
        ]
        for r in g["runs"]
    ]
    return md_table(
        [
            "variant",
            "base seed",
            "exact captions en / zh",
            "VQA en / zh",
            "captions, 3 objects",
            "lowest of the four",
        ],
        rows,
    ) + (
        f"\n\nSetup: {g['setup']}. Source: `bench/results/{name}.json` (generator_only_variants)"
        "; load not recorded."
    )


@table("shapes16")
def _shapes16() -> str:
    name = "shapes16-cpu-2026-11-30"
    d = load(name)
    rows = []
    for part, label in (
        ("full_run", "1200 generator steps"),
        ("continued_2400_steps", "continued to 2400"),
    ):
        for ev_name, ev in d[part]["evals"].items():
            t = {lang: ev[lang]["text2image"] for lang in ("en", "zh")}
            rows.append(
                [
                    label,
                    ev_name,
                    pair(
                        t["en"]["before_rerank"]["fully_correct"],
                        t["zh"]["before_rerank"]["fully_correct"],
                        lambda v: pct(v, 0),
                    ),
                    pair(
                        t["en"]["after_rerank"]["fully_correct"],
                        t["zh"]["after_rerank"]["fully_correct"],
                        lambda v: pct(v, 0),
                    ),
                    t["en"]["samples_per_prompt"],
                ]
            )
    full = d["full_run"]
    oracle = d["continued_2400_steps"]["best_of_8_oracle_T0.3"]
    return md_table(
        [
            "run",
            "sampling",
            "images fully correct before reranking, en / zh",
            "after reranking",
            "samples per prompt",
        ],
        rows,
    ) + (
        f"\n\nFull run: `{full['command']}`, wall {full['time']['wall']}, CPU "
        f"{full['time']['user_cpu_s'] + full['time']['sys_cpu_s']:.0f} s; 50 held-out prompts. "
        f"At 2400 steps and temperature 0.3, some sample of the 8 was right for "
        f"{pair(oracle['en'], oracle['zh'], lambda v: pct(v, 0))} of the prompts (en / zh): "
        "the generator, not the reranker, limits the result. "
        f"Source: `bench/results/{name}.json`, {d['date']}, commit {d['commit']}; "
        f"{d['device']}."
    )


# ---------------------------------------------------------------------------------------------
# the README's headline table


# The runs of the current code, every one of them: the drop-in runs since native GQA and both
# model-step runs (older runs and the rest of each file are on the benchmarks page).
HEADLINE_DROPIN = DROPIN_RUNS[2:]


@table("headline")
def _headline() -> str:
    gen = {r["mode"]: r for r in load("generation-cpu-2026-11-30")["rows"]}
    att = {(r["grid"], r["kind"], r["mode"]): r for r in load("attention-cpu-2026-11-23")["rows"]}

    def src(name):
        return f"`{name}` ({loads(load(name)['load_average'])})"

    rows = []
    for model, what in (
        ("llama", "LM, seq 4096, sliding window 512, GQA: SDPA time / vilg time"),
        ("vit", "ViT, 64x64 patches + CLS, 7x7 neighbourhood: SDPA time / vilg time"),
    ):
        for name, _ in HEADLINE_DROPIN:
            r = _dropin_rows(name, model)["sdpa"]
            rows.append(
                [
                    what,
                    f"{x(r['fwd_x_vs_vilg'])} fwd, {x(r['fwd_bwd_x_vs_vilg'])} fwd+bwd",
                    src(name),
                ]
            )
    rows.append(
        [
            "row attention op, 64 text + 32x32 grid, vs masked SDPA",
            f"{x(att[('32x32', 'row', 'fwd')]['vs_sdpa'])} fwd, "
            f"{x(att[('32x32', 'row', 'fwdbwd')]['vs_sdpa'])} fwd+bwd",
            src("attention-cpu-2026-11-23"),
        ]
    )
    for name in MODEL_STEP_RUNS:
        step = load(name)["training"]["ratios"]
        rows.append(
            [
                "12-layer text→image training step, vilg vs masked SDPA / eager",
                f"{x(step['vilg_vs_sdpa']['step_speedup_median'])} / "
                f"{x(step['vilg_vs_eager']['step_speedup_median'])} faster, "
                f"{pct(step['vilg_vs_sdpa']['peak_memory_less'], 0)} / "
                f"{pct(step['vilg_vs_eager']['peak_memory_less'], 0)} less peak memory",
                src(name),
            ]
        )
    rows.append(
        [
            "1024-token image generation, ms per token: vilg / dense SDPA decode",
            f"{gen['vilg']['ms_per_token_median']:.1f} / {gen['sdpa']['ms_per_token_median']:.1f}",
            src("generation-cpu-2026-11-30"),
        ]
    )
    return md_table(
        ["what (fp32, CPU, 2 threads)", "measured (medians)", "file (load average 1 / 5 / 15 min)"],
        rows,
    ) + (
        "\n\nAll on a shared 2-core AMD EPYC VM; files under `bench/results/`. No GPU has run "
        "the CUDA kernels yet."
    )


# ---------------------------------------------------------------------------------------------


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "–" if v is None else str(v).replace("|", "\\|")


def whole_file(name: str) -> str:
    """Every row of a standard results file, every scalar field a column, in the file's order."""
    rows = load(name)["rows"]
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (dict, list))]
    body = md_table(cols, [[cell(r.get(k)) for k in cols] for r in rows])
    return body + "\n\n" + provenance(name)


def render_block(name: str, where: str = "<text>") -> str:
    if name.startswith("file:"):
        return whole_file(name[len("file:") :])
    if name not in TABLES:
        raise KeyError(f"{where}: no table named {name!r} (known: {', '.join(TABLES)})")
    return TABLES[name]()


def render_text(text: str, where: str = "<text>") -> str:
    def sub(m: re.Match) -> str:
        body = render_block(m.group("name"), where)
        return m.group("open") + body.rstrip() + "\n" + m.group("close")

    return BLOCK.sub(sub, text)


def block_names(text: str) -> list[str]:
    return [m.group("name") for m in BLOCK.finditer(text)]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def stale(paths: Iterable[Path] | None = None) -> list[str]:
    """The blocks whose text differs from what the results files render, as 'file: name'."""
    out = []
    for path in paths or documents():
        text = path.read_text()
        fresh = render_text(text, str(path))
        if fresh != text:
            old = {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
            new = {m.group("name"): m.group("body") for m in BLOCK.finditer(fresh)}
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            out += [f"{shown}: {n}" for n in new if new[n] != old.get(n)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for b in bad:
            print(f"stale: {b} (run python scripts/render_docs.py)")
        return 1 if bad else 0
    for path in documents():
        text = path.read_text()
        fresh = render_text(text, str(path))
        if fresh != text:
            path.write_text(fresh)
            print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
