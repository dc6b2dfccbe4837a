import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vilg.app.cli import main
from vilg.app.data.shapes import render, sample_scene
from vilg.app.data.text_tokenizer import PromptError
from vilg.app.generate import Pipeline

PROMPT = "a large red circle at the top left"


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.load(tiny_run)


def test_generate_shapes_rerank_and_reproducibility(pipe):
    a = pipe.generate([PROMPT, "中间有一个小的蓝色正方形"], n=3, seed=5)
    assert a["images"].shape == (2, 3, 3, 48, 48) and a["codes"].shape == (2, 3, 9)
    s = a["scores"]
    assert (s[:, :-1] >= s[:, 1:]).all()  # best first
    b = pipe.generate([PROMPT, "中间有一个小的蓝色正方形"], n=3, seed=5)
    assert torch.equal(a["codes"], b["codes"])
    g = pipe.generate([PROMPT], n=2, temperature=0.0, cfg_scale=2.0)
    assert torch.equal(g["codes"][0, 0], g["codes"][0, 1])  # argmax is deterministic


def test_generation_samples_only_codes_the_tokenizer_emits(pipe):
    live = pipe.vq.quantizer.live
    assert not bool(live.all())  # the tiny tokenizer leaves spare codes
    # hot sampling and guidance: an undertrained generator spreads mass over every code
    for kw in ({"temperature": 5.0}, {"temperature": 5.0, "cfg_scale": 3.0}):
        codes = pipe.generate([PROMPT], n=16, seed=3, **kw)["codes"]
        assert bool(live[codes].all())


def test_bad_prompts_raise_prompt_error(pipe):
    with pytest.raises(PromptError, match="unknown"):
        pipe.generate(["a purple zebra"], n=1)
    with pytest.raises(PromptError, match="at most"):
        pipe.generate([" and ".join([PROMPT] * 12)], n=1)


def test_caption_greedy_equals_beam_one_and_vqa_runs(pipe):
    x = (
        torch.from_numpy(np.stack([render(sample_scene("test", 0, i)[0], 48) for i in range(3)]))
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )
    g = pipe.caption(x, "en")
    assert g == pipe.caption(x, "en", beam=1) and len(g) == 3
    assert len(pipe.caption(x, "zh", beam=3)) == 3
    assert len(pipe.answer(x, "how many objects are there?")) == 3


def test_cli_commands_and_clear_errors(tiny_run, tmp_path, capsys):
    run = str(tiny_run)
    out = tmp_path / "gen"
    assert main(["generate", PROMPT, "-n", "2", "-o", str(out), "--run", run]) == 0
    assert (out / "sample_00.png").exists() and (out / "grid.png").exists()
    res = json.loads(capsys.readouterr().out)
    assert len(res["detector_correct"]) == 2  # the shapes detector judged each sample
    # in-vocabulary but off the caption grammar: generated, with a warning and no verdicts
    assert (
        main(["generate", "a large red circle at the left top", "--run", run, "-o", str(out)]) == 0
    )
    io = capsys.readouterr()
    assert "closest: 'a large red circle at the top left'" in io.err
    assert "detector_correct" not in json.loads(io.out)
    assert main(["generate", "the red one", "--run", run, "-o", str(out)]) == 0
    assert "does not follow" in capsys.readouterr().err  # nothing to suggest
    # any object order and any wording of the grammar: the detector's verdicts, with a warning
    # naming the canonical form unless the run trained on any order (t2i_shuffle)
    any_order = tmp_path / "any-order-run"
    shutil.copytree(run, any_order)
    preset = json.loads((any_order / "preset.json").read_text())
    preset["generator"].setdefault("tasks", {})["t2i_shuffle"] = True
    (any_order / "preset.json").write_text(json.dumps(preset))
    for said in (
        "a small blue square at the center and a large red circle at the top left",
        "in the middle there is a little blue square, and a big red circle at the top-left",
    ):
        assert main(["generate", said, "-n", "1", "--run", run, "-o", str(out)]) == 0
        io = capsys.readouterr()
        assert "cell order" in io.err and "detector_correct" in json.loads(io.out)
        assert "canonical form of this prompt: 'a large red circle at the top left and" in io.err
        assert main(["generate", said, "-n", "1", "--run", str(any_order), "-o", str(out)]) == 0
        io = capsys.readouterr()
        assert "warning" not in io.err and "detector_correct" in json.loads(io.out)
    # a Chinese prompt in cell order typed with full-width punctuation is accepted as is
    zh = "左上方有一个大的红色圆形，中间有一个小的蓝色正方形"
    assert main(["generate", zh, "-n", "1", "--run", run, "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    img = tmp_path / "x.png"
    Image.fromarray(render(sample_scene("test", 0, 1)[0], 48)).save(img)
    assert main(["caption", str(img), "--lang", "en,zh", "--run", run]) == 0
    assert main(["ask", str(img), "how many objects are there?", "--run", run]) == 0
    capsys.readouterr()
    assert main(["generate", "a zebra", "--run", run, "-o", str(out)]) == 2
    assert "bad prompt" in capsys.readouterr().err
    assert main(["caption", str(tmp_path / "missing.png"), "--run", run]) == 2
    assert "no such image" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--run", str(tmp_path / "nope")]) == 2
    assert "no trained run" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["caption", str(tmp_path / "bad.png"), "--run", run]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_incompatible_checkpoint_is_reported(tiny_run, tmp_path, capsys):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(tiny_run, bad)
    conf = json.loads((bad / "generator" / "config.json").read_text())
    conf["n_embd"] = 64
    (bad / "generator" / "config.json").write_text(json.dumps(conf))
    assert main(["generate", PROMPT, "--run", str(bad)]) == 2
    assert "does not match" in capsys.readouterr().err


def test_eval_writes_json(tiny_run, tmp_path):
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                "--run",
                str(tiny_run),
                "-o",
                str(out),
                "--prompts",
                "2",
                "--samples",
                "2",
                "--captions",
                "5",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    for lang in ("en", "zh"):
        t = res[lang]["text2image"]
        assert set(t) >= {"before_rerank", "after_rerank"}
        assert {"exact", "bleu4", "cider_d"} <= set(res[lang]["caption"])
        assert 0 <= res[lang]["vqa"]["accuracy"] <= 1
        # text->image for canonical, shuffled and paraphrased prompts side by side
        assert set(res[lang]["text2image_by_prompts"]) == {"canonical", "shuffled", "paraphrased"}
        assert res[lang]["text2image_paraphrased"]["prompts_kind"] == "paraphrased"
        assert "mean_abs_gap_shuffled" in res[lang]["matcher_order"]
    assert "psnr" in res["tokenizer"] and "perplexity" in res["tokenizer"]


def test_threads_default_to_every_usable_core():
    import os

    from vilg.app.cli import _threads

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("Linux only")
    _threads(None)
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    _threads(1)
    assert torch.get_num_threads() == 1


def test_demo_evaluates_and_writes_the_gallery(tiny_run, tmp_path):
    import shutil

    from vilg.app.demo import run_demo

    out = tmp_path / "demo"
    shutil.copytree(tiny_run, out)  # trained stages are reused, as on a re-run
    eval_kw = {"n_prompts": 2, "n_samples": 2, "n_caption": 5}
    m = run_demo(out, preset="tiny", eval_kw=eval_kw, log=lambda *a: None)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for lang in ("en", "zh"):
        assert saved[lang]["caption"]["n"] == 5 and saved[lang]["vqa"]["n"] == 5
        assert 0 <= saved[lang]["text2image"]["after_rerank"]["fully_correct"] <= 1
    assert {"eval", "gallery", "demo_total"} <= set(saved["timings_s"])
    page = (out / "gallery" / "index.html").read_text()
    assert "<img" in page and "VQA" in page
