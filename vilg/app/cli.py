"""The `vilg` command: demo, train, prepare, generate, caption, ask, eval, plan, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_RUN = "runs/demo"
_PRESET_HELP = (
    "tiny | demo | long | real | grid32-small | ernie-vilg-300m | ernie-vilg-10b "
    "(vilg/app/train/presets.py)"
)


def _threads(n: int | None) -> None:
    import torch

    # default: every core this process may use; --threads 1 suits a shared machine, where a
    # thread team waits for its slowest member on a busy core
    if not n:
        aff = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere all cores
        n = len(aff(0)) if aff else os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def _pipeline(args):
    from vilg.app.generate import Pipeline

    e2e = {"auto": None, "yes": True, "no": False}[args.end_to_end]
    return Pipeline.load(args.run, device=args.device, end_to_end=e2e)


def cmd_profile(args) -> int:
    from vilg.profile import run

    run(args)
    return 0


def cmd_demo(args) -> int:
    from vilg.app.demo import run_demo

    run_demo(args.out, preset=args.preset, device=args.device, seed=args.seed)
    return 0


def cmd_train(args) -> int:
    from vilg.app.train.presets import get_preset
    from vilg.app.train.run import train_run

    preset = get_preset(args.preset, args.set)
    stages = args.stages.split(",")
    dist = None
    if args.distributed:  # under torchrun: see docs/distributed.md
        from vilg.app.train import distributed

        dist = distributed.init(args.distributed, cpu_offload=args.cpu_offload)
    elif args.cpu_offload:
        raise ValueError("--cpu-offload needs --distributed fsdp")
    try:
        t = train_run(
            preset,
            args.out,
            data=args.data,
            device=args.device,
            seed=args.seed,
            stages=stages,
            dist=dist,
        )
    finally:
        if dist is not None:
            distributed.shutdown()
    if dist is None or dist.is_main:
        print(json.dumps({"timings_s": t}, indent=2))
    return 0


def cmd_prepare(args) -> int:
    from vilg.app.train.shards import prepare

    info = prepare(
        args.run,
        args.out,
        args.data,
        per_shard=args.per_shard,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
    )
    print(json.dumps(info, indent=2))
    return 0


def _trained_on_shapes(run: str) -> bool:
    from vilg.app.train import checkpoint as ckpt

    preset = Path(run) / "preset.json"
    return preset.exists() and ckpt.load_json(preset).get("data_source") is None


def _shapes_prompt(run: str, prompt: str):
    """For a run trained on the built-in shapes data: the prompt's scene, or a warning (None
    and a message) when the prompt is outside the prompt grammar (docs/prompts.md), naming the
    closest prompt inside it when there is one. Any object order and any of the grammar's
    wordings is taken without a warning."""
    from vilg.app.data import prompts

    if not _trained_on_shapes(run):
        return None, None
    parsed = prompts.parse_caption(prompt)
    if parsed is not None:
        from vilg.app.data import shapes
        from vilg.app.train import checkpoint as ckpt
        from vilg.app.train.recipe import any_order_prompts

        scene, lang = parsed
        canonical = shapes.caption(scene, lang)
        if not prompts.is_canonical(prompt) and not any_order_prompts(
            ckpt.load_json(Path(run) / "preset.json")
        ):
            return scene, (
                "this model was trained on captions that name objects in cell order with the "
                "canonical wording (train with --set generator.tasks.t2i_shuffle=true for any "
                f"order; docs/prompts.md); the canonical form of this prompt: {canonical!r}"
            )
        return scene, None
    near = prompts.closest(prompt)
    if near is not None:
        return None, (
            "this prompt is outside the prompt grammar this model was trained on "
            f"(docs/prompts.md); closest: {near[2]!r}"
        )
    return None, (
        "this model was trained on the built-in shapes captions and this prompt does not "
        "follow them (e.g. 'a large red circle at the top left and a small blue square at "
        "the center'); expect meaningless images"
    )


def cmd_generate(args) -> int:
    from vilg.app.generate import save_grid

    pipe = _pipeline(args)
    scene, warning = _shapes_prompt(args.run, args.prompt)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    out = pipe.generate(
        [args.prompt],
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        cfg_scale=args.cfg,
        seed=args.seed,
        step_mode=args.step_mode,
    )
    o = Path(args.output)
    o.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    from vilg.app.generate import to_uint8

    arr = to_uint8(out["images"][0])
    for k in range(args.n):
        Image.fromarray(arr[k]).save(o / f"sample_{k:02d}.png")
    save_grid(out["images"][0], o / "grid.png", nrow=min(8, args.n), scale=4)
    res = {
        "prompt": args.prompt,
        "dir": str(o),
        "matcher_scores": [round(float(s), 4) for s in out["scores"][0]],
        "reranked": pipe.matcher is not None,
    }
    if scene is not None:  # the detector can say which samples show the prompt
        from vilg.app.eval.detector import score

        res["detector_correct"] = [bool(score(a, scene)["correct"]) for a in arr]
    print(json.dumps(res, ensure_ascii=False))
    return 0


def cmd_caption(args) -> int:
    pipe = _pipeline(args)
    img = pipe.load_image(args.image)[None]
    for lang in args.lang.split(","):
        print(pipe.caption(img, lang=lang, beam=args.beam)[0])
    return 0


def cmd_ask(args) -> int:
    pipe = _pipeline(args)
    img = pipe.load_image(args.image)[None]
    print(pipe.answer(img, args.question)[0])
    return 0


def cmd_eval(args) -> int:
    from vilg.app.eval.evaluate import evaluate
    from vilg.app.train.checkpoint import atomic_write_json

    if (Path(args.run) / "preset.json").exists() and not _trained_on_shapes(args.run):
        raise ValueError(
            f"{args.run} was trained on user data; `vilg eval` scores the built-in shapes "
            "scenes (its detector reads rendered shapes), so it only applies to shapes runs"
        )
    pipe = _pipeline(args)
    res = evaluate(
        pipe,
        n_prompts=args.prompts,
        n_samples=args.samples,
        n_caption=args.captions,
        seed=args.seed,
        sample_kw={"temperature": args.temperature, "top_k": args.top_k, "cfg_scale": args.cfg},
    )
    out = Path(args.output or Path(args.run) / "eval.json")
    atomic_write_json(out, res)
    print(f"wrote {out}")
    return 0


def cmd_plan(args) -> int:
    from vilg.app.plan import format_plan, plan
    from vilg.app.train.presets import get_preset

    p = plan(
        get_preset(args.preset, args.set),
        gpus=args.gpus,
        answer_len=args.answer_len,
        gpu_mem_gib=args.gpu_mem,
        mfu=args.mfu,
    )
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0


def cmd_info(args) -> int:
    import vilg

    info = vilg.build_info() if hasattr(vilg, "build_info") else {"build_info": "unavailable"}
    print(json.dumps(info, indent=2, default=str) if isinstance(info, dict) else info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vilg", description="ERNIE-ViLG style bidirectional text<->image generation"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all usable cores)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def run_opts(sp):
        sp.add_argument("--run", default=DEFAULT_RUN, help="trained run directory")
        sp.add_argument("--device", default="cpu")
        sp.add_argument(
            "--end-to-end",
            default="auto",
            choices=["auto", "yes", "no"],
            help="use the end-to-end generator + decoder",
        )

    sp = sub.add_parser(
        "demo", help="train everything on the built-in shapes data, then write a gallery"
    )
    sp.add_argument("--out", default=DEFAULT_RUN)
    sp.add_argument("--preset", default="demo")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("train", help="train the stages of a run")
    sp.add_argument("--preset", default="demo", help=_PRESET_HELP)
    sp.add_argument("--out", default="runs/train")
    sp.add_argument(
        "--data",
        default=None,
        help="image folder with metadata.jsonl, or tar shards glob; default: built-in shapes",
    )
    sp.add_argument(
        "--stages",
        default="vq,matcher,generator",
        help="comma list of vq,matcher,generator,end2end",
    )
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a preset entry, e.g. generator.train.steps=5000",
    )
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--distributed",
        choices=["ddp", "fsdp"],
        default=None,
        help="data-parallel generator training under torchrun (default: one process)",
    )
    sp.add_argument(
        "--cpu-offload",
        action="store_true",
        help="fsdp on GPU: parameters and optimizer state in CPU memory",
    )
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser(
        "prepare", help="encode a data source with a run's image tokenizer into code shards"
    )
    sp.add_argument("--run", required=True, help="run directory with a trained image tokenizer")
    sp.add_argument("--out", required=True, help="folder for the shards (train/, val/)")
    sp.add_argument(
        "--data", default=None, help="image folder or tar shards glob; default: built-in shapes"
    )
    sp.add_argument("--per-shard", type=int, default=1000, help="samples per tar shard")
    sp.add_argument("--workers", type=int, default=0, help="DataLoader workers that decode")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--seed", type=int, default=0, help="the run's seed (shapes scenes)")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("generate", help="text -> image")
    sp.add_argument("prompt")
    sp.add_argument("-n", type=int, default=8, help="samples (reranked by the matcher)")
    sp.add_argument("-o", "--output", default="out")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--step-mode",
        default="auto",
        choices=["auto", "eager", "compile", "cuda-graph"],
        help="how each decoding step runs: auto = a CUDA graph on a GPU, eager on the CPU; "
        "compile pays a one-time compilation for faster steps (worth it for many images)",
    )
    run_opts(sp)
    sp.set_defaults(fn=cmd_generate)

    sp = sub.add_parser("caption", help="image -> text")
    sp.add_argument("image")
    sp.add_argument("--lang", default="en", help="en, zh or en,zh")
    sp.add_argument("--beam", type=int, default=1)
    run_opts(sp)
    sp.set_defaults(fn=cmd_caption)

    sp = sub.add_parser("ask", help="visual question answering")
    sp.add_argument("image")
    sp.add_argument("question")
    run_opts(sp)
    sp.set_defaults(fn=cmd_ask)

    sp = sub.add_parser("eval", help="score a run on held-out shapes scenes (JSON)")
    sp.add_argument("-o", "--output", default=None)
    sp.add_argument("--prompts", type=int, default=50)
    sp.add_argument("--samples", type=int, default=8)
    sp.add_argument(
        "--captions", type=int, default=500, help="scenes per language for captions and VQA"
    )
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--cfg", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0)
    run_opts(sp)
    sp.set_defaults(fn=cmd_eval)

    from vilg import profile

    sp = sub.add_parser(
        "profile",
        help="time one kernel against the machine's own limits (roofline probe)",
        description=profile.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile.parser(sp)
    sp.set_defaults(fn=cmd_profile)

    sp = sub.add_parser(
        "plan",
        help="size a preset without training it: parameters, FLOPs, activation and GPU memory",
    )
    sp.add_argument("--preset", default="demo", help=_PRESET_HELP)
    sp.add_argument("--gpus", type=int, default=8, help="GPUs the generator is sharded over")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a preset entry, as for train (e.g. text_len=128)",
    )
    sp.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (fits or not)")
    sp.add_argument("--answer-len", type=int, default=8, help="answer tokens of a vqa sequence")
    sp.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the step time")
    sp.add_argument("--json", action="store_true", help="the whole plan as JSON")
    sp.set_defaults(fn=cmd_plan)

    sp = sub.add_parser("info", help="build information")
    sp.set_defaults(fn=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from vilg.app.data.text_tokenizer import PromptError
    from vilg.app.train.checkpoint import CheckpointError

    try:
        _threads(args.threads)
        return args.fn(args)
    except PromptError as e:
        print(f"vilg: bad prompt: {e}", file=sys.stderr)
    except FileNotFoundError as e:
        print(f"vilg: {e}", file=sys.stderr)
    except CheckpointError as e:
        print(f"vilg: checkpoint problem: {e}", file=sys.stderr)
    except ValueError as e:
        print(f"vilg: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("vilg: interrupted (training resumes from the last checkpoint)", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
