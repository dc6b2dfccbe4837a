"""The prompt grammar: sampled orders and wordings, parsing them back, suggestions for prompts
outside it, the training captions built from it, and the evaluation's breakdown by prompt kind."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from vilg.app.data import prompts, shapes
from vilg.app.eval import evaluate


def three_object_scenes(n=40):
    return [shapes.sample_scene("train", 0, i, (0, 0, 1))[0] for i in range(n)]


def test_canonical_wording_is_the_caption():
    for i in range(100):
        scene = shapes.sample_scene("val", 1, i)[0]
        for lang in shapes.LANGS:
            assert prompts.render(scene, lang) == shapes.caption(scene, lang)


@pytest.mark.parametrize("lang", shapes.LANGS)
def test_sampled_order_is_uniform_and_seeded(lang):
    scene = three_object_scenes(1)[0]
    rng = np.random.default_rng(5)
    orders = Counter()
    for _ in range(1200):
        objs, said = prompts.parse(prompts.sample(scene, lang, rng))
        assert said == lang and sorted(objs) == list(scene)
        orders[tuple(o.cell for o in objs)] += 1
    assert len(orders) == 6  # every permutation of three objects, about 200 times each
    assert all(150 < c < 250 for c in orders.values()), orders
    again = [prompts.sample(scene, lang, np.random.default_rng(9)) for _ in range(3)]
    assert again == [prompts.sample(scene, lang, np.random.default_rng(9))] * 3
    other = {prompts.sample(scene, lang, np.random.default_rng(s)) for s in range(20)}
    assert len(other) > 5
    # shuffle=False keeps the cell order; paraphrase=0 the canonical wording
    fixed = prompts.sample(scene, lang, rng, shuffle=False, paraphrase=0.0)
    assert fixed == shapes.caption(scene, lang)


@pytest.mark.parametrize("lang", shapes.LANGS)
def test_every_wording_parses_back_to_its_objects_in_order(lang):
    rng = np.random.default_rng(3)
    seen = set()
    for i in range(400):
        scene = shapes.sample_scene("train", 2, i)[0]
        objs = prompts.shuffled(scene, rng)
        text = prompts.render(objs, lang, rng)
        assert prompts.parse(text) == (objs, lang), text
        assert prompts.parse_caption(text) == (scene, lang)
        seen.update(text.replace(",", " , ").split() if lang == "en" else [text])
    if lang == "en":  # every synonym of the grammar was drawn
        words = {w for t in prompts.SIZES_EN + prompts.CELLS_EN for s in t for w in s.split()}
        assert words | {"there", "in", ","} <= seen
    # typed variants: capitals, a full stop, spaces around hyphens, full-width punctuation
    assert prompts.parse("There is a BIG red circle in the middle.")[0] == [shapes.Obj(4, 0, 0, 0)]
    assert prompts.parse("a small red circle at the bottom - right")[0][0].cell == 8
    assert prompts.parse("一个小的红色圆形在右下角，中间是一个大的蓝色菱形。")[0] == [
        shapes.Obj(8, 0, 0, 1),
        shapes.Obj(4, 3, 2, 0),
    ]


def test_outside_the_grammar():
    for bad in (
        "a large red circle at the moon",
        "a large red circle",
        "a large red circle at the top and a small red square at the top",  # one cell twice
        " and ".join(["a large red circle at the top"] * 4),
        "a red circle at the center",  # no size
        "",
    ):
        assert prompts.parse(bad) is None, bad
    # the closest prompt inside the grammar keeps the user's order
    for said, near in (
        ("a big red cirle in the centre", "a large red circle at the center"),
        ("red circle at the center", "a large red circle at the center"),
        (
            "a small green triangle at bottom right and a small blue square left top",
            "a small green triangle at the bottom right and a small blue square at the top left",
        ),
        (
            "中间一个红色圆形,左上方有一个小的蓝色正方形",
            "中间有一个大的红色圆形,左上方有一个小的蓝色正方形",
        ),
    ):
        objs, lang, text = prompts.closest(said)
        assert text == near and prompts.parse(text) == (objs, lang)
    for hopeless in (
        "the red one",
        "a circle at the center",
        "红色圆形",
        "a red circle and a blue one",
    ):
        assert prompts.closest(hopeless) is None, hopeless


@pytest.mark.parametrize("lang", shapes.LANGS)
def test_hard_negative_shares_order_and_wording(lang):
    rng = np.random.default_rng(0)
    orders = set()
    for scene in three_object_scenes(200):
        pos, neg = prompts.caption_pair(scene, lang, rng)
        (a, _), (b, _) = prompts.parse(pos), prompts.parse(neg)
        assert sorted(a) == list(scene)
        diff = [
            (f, x, y)
            for x, y in zip(a, b)
            for f in ("cell", "shape", "color", "size")
            if getattr(x, f) != getattr(y, f)
        ]
        assert len(diff) == 1  # one attribute of one object, in the same position
        assert skeleton(pos, lang) == skeleton(neg, lang)  # the same wording
        orders.add(tuple(o.cell for o in a) == tuple(sorted(o.cell for o in a)))
    assert orders == {True, False}


def skeleton(text, lang):
    """The text with every attribute word replaced by its kind and synonym index."""
    en = lang == "en"
    sizes = prompts.SIZES_EN if en else tuple((w,) for w in shapes.SIZES_ZH)
    cells = prompts.CELLS_EN if en else prompts.CELLS_ZH
    table = [(w, f"<Z{k}>") for t in sizes for k, w in enumerate(t)]
    table += [(w, "<L>") for t in cells for w in t]  # a changed cell may have fewer synonyms
    table += [(w, "<C>") for w in (shapes.COLORS if en else shapes.COLORS_ZH)]
    table += [(w, "<S>") for w in (shapes.SHAPES if en else shapes.SHAPES_ZH)]
    if en:
        text = f" {text.replace(',', ' ,')} "
    for w, mark in sorted(table, key=lambda x: -len(x[0])):  # "top left" before "top"
        text = text.replace(f" {w} " if en else w, f" {mark} " if en else mark)
    return text


# ----------------------------------------------------------------------------- evaluation


class DrawsOnlyCellOrder:
    """Stand-in pipeline: draws the prompt's scene when its objects come in cell order, and a
    blank image otherwise (what the model trained on canonical captions did)."""

    matcher = None

    def generate(self, texts, n, seed=0, **kw):
        imgs = []
        for t in texts:
            objs, _ = prompts.parse(t)
            scene = tuple(objs) if objs == sorted(objs) else ()
            imgs.append(np.stack([shapes.render(scene, 48)] * n))
        x = torch.from_numpy(np.stack(imgs)).permute(0, 1, 4, 2, 3).float() / 255
        return {"images": x}


def test_text2image_breakdown_by_prompt_kind():
    scenes = [shapes.sample_scene("test", 0, i)[0] for i in range(30)]
    single = np.mean([len(s) == 1 for s in scenes])
    assert 0 < single < 1
    pipe = DrawsOnlyCellOrder()
    res = {
        kind: evaluate.eval_text2image(pipe, scenes, "en", 2, batch=7, prompts_kind=kind)
        for kind in evaluate.PROMPT_KINDS
    }
    assert res["canonical"]["after_rerank"]["fully_correct"] == 1.0
    # shuffled: right on the 1-object scenes alone
    assert abs(res["shuffled"]["after_rerank"]["fully_correct"] - single) < 1e-3
    assert res["shuffled"]["after_rerank_by_objects"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    # paraphrased: the order is random (cell order included), the wording never canonical
    para = [prompts.parse(t)[0] for t in evaluate.eval_prompts(scenes, "en", "paraphrased")]
    in_order = np.mean([objs == sorted(objs) for objs in para])
    assert single < in_order < 1
    assert abs(res["paraphrased"]["after_rerank"]["fully_correct"] - in_order) < 1e-3
    for lang in shapes.LANGS:
        canon = evaluate.eval_prompts(scenes, lang, "canonical")
        shuf = evaluate.eval_prompts(scenes, lang, "shuffled", seed=1)
        para = evaluate.eval_prompts(scenes, lang, "paraphrased", seed=1)
        assert shuf == evaluate.eval_prompts(scenes, lang, "shuffled", seed=1)  # seeded
        for sc, c, s, p in zip(scenes, canon, shuf, para):
            assert prompts.parse_caption(s) == prompts.parse_caption(p) == (sc, lang)
            assert (s != c) == (len(sc) > 1) and p != c
    with pytest.raises(ValueError, match="prompt kind"):
        evaluate.eval_prompts(scenes, "en", "reversed")


class BagMatcher(torch.nn.Module):
    """Stand-in matcher: a text embedding that ignores token positions, or not."""

    def __init__(self, positional):
        super().__init__()
        self.positional = positional

    def score(self, images, ids, lens):
        pos = torch.arange(ids.shape[1]) + 1 if self.positional else torch.ones(ids.shape[1])
        mask = torch.arange(ids.shape[1])[None] < lens[:, None]
        t = (torch.sin(ids * 0.37) * pos * mask).sum(1)
        return torch.tanh(t / 50 + images.flatten(1).mean(1))


class Tok:
    pad_id = 0

    def encode(self, text):
        return [sum(map(ord, w)) % 997 + 1 for w in text.replace(",", " , ").split()]


def test_matcher_order_measure():
    scenes = three_object_scenes(30)
    images = torch.rand(30, 3, 8, 8)

    class Pipe:
        tok, device = Tok(), "cpu"

    Pipe.matcher = BagMatcher(positional=False)
    r = evaluate.eval_matcher_order(Pipe, images, scenes, "en")
    assert r["scenes"] == 30 and r["mean_abs_gap_shuffled"] == 0.0
    Pipe.matcher = BagMatcher(positional=True)
    assert evaluate.eval_matcher_order(Pipe, images, scenes, "en")["mean_abs_gap_shuffled"] > 0


def test_permutations_cover_every_order_of_two():
    scene = three_object_scenes(1)[0][:2]
    rng = np.random.default_rng(0)
    got = {tuple(prompts.shuffled(scene, rng)) for _ in range(50)}
    assert got == set(itertools.permutations(scene))
    assert all(prompts.shuffled(scene, rng, differ=True) != list(scene) for _ in range(20))
