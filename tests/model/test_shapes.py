import numpy as np
import pytest

from vilg.app.data import prompts, shapes
from vilg.app.data.shapes import Obj, ShapesDataset, caption, render, sample_scene, scene_split


def test_spec_caption_examples():
    scene = (Obj(0, 0, 0, 0), Obj(4, 1, 2, 1))  # large red circle TL, small blue square center
    assert caption(scene, "en") == (
        "a large red circle at the top left and a small blue square at the center"
    )
    assert caption(scene, "zh") == "左上方有一个大的红色圆形,中间有一个小的蓝色正方形"


def test_sample_is_pure_function_of_split_seed_index():
    a = ShapesDataset("val", 20, seed=3, image_size=48)
    b = ShapesDataset("val", 20, seed=3, image_size=48)
    for i in (0, 7, 19):
        x, y = a[i], b[i]
        assert np.array_equal(x["image"].numpy(), y["image"].numpy())
        assert x["caption_zh"] == y["caption_zh"] and x["question_en"] == y["question_en"]
    c = ShapesDataset("val", 20, seed=4, image_size=48)
    assert [a.scene(i) for i in range(20)] != [c.scene(i) for i in range(20)]


def test_splits_never_share_a_scene():
    seen = {}
    for split in ("train", "val", "test"):
        for seed in (0, 1):
            for i in range(300):
                s = sample_scene(split, seed, i)[0]
                assert scene_split(s) == split
                assert seen.setdefault(shapes.scene_key(s), split) == split


def test_render_geometry():
    s = (Obj(2, 1, 3, 0),)  # large yellow square, top right
    img = render(s, 48)
    fg = img.max(-1) > 0
    ys, xs = np.nonzero(fg)
    assert ys.min() >= 0 and ys.max() < 16 and xs.min() >= 32 and xs.max() < 48
    assert (img[fg] == shapes.RGB[3]).all()
    assert fg.sum() == 14 * 14  # side 0.9 * 16 = 14.4 px -> 14 pixel centres per axis
    with pytest.raises(ValueError):
        render(s, 12)


def test_object_counts_and_distinct_cells():
    counts = np.zeros(4)
    for i in range(500):
        s = sample_scene("train", 0, i)[0]
        assert len({o.cell for o in s}) == len(s)
        assert [o.cell for o in s] == sorted(o.cell for o in s)
        counts[len(s)] += 1
    frac = counts[1:] / counts.sum()
    assert abs(frac[0] - 0.4) < 0.08 and abs(frac[2] - 0.2) < 0.08


def test_count_probs_reweight_training_scenes_but_never_cross_splits():
    many = [sample_scene("train", 0, i, count_probs=(0, 1, 3))[0] for i in range(400)]
    counts = np.bincount([len(s) for s in many], minlength=4)
    assert counts[1] == 0 and 0.65 < counts[3] / 400 < 0.85
    assert all(scene_split(s) == "train" for s in many)
    # the benchmark's splits are untouched by the default
    assert sample_scene("test", 0, 7)[0] == sample_scene("test", 0, 7, shapes.COUNT_PROBS)[0]
    for bad in ((0.5, 0.5), (1, -1, 1), (0, 0, 0), "abc", (1, float("nan"), 1)):
        with pytest.raises(ValueError, match="count_probs"):
            sample_scene("train", 0, 0, count_probs=bad)


def test_run_pools_lean_on_many_object_scenes_for_training_only():
    from vilg.app.train.presets import get_preset
    from vilg.app.train.run import build_pools

    p = get_preset("tiny", ["data.train_size=60", "data.val_size=60"])
    p["data"]["train_count_probs"] = [0, 0, 1]
    train, val = build_pools(p, None, seed=0)
    assert {len(s) for s in train.scenes} == {3}
    assert {len(s) for s in val.scenes} == {1, 2, 3}


def test_questions_have_correct_answers():
    rng = np.random.default_rng(0)
    for i in range(200):
        s = sample_scene("test", 0, i)[0]
        q, a = shapes.question(s, "count", "en", rng)
        assert a == shapes.COUNTS[len(s) - 1]
        q, a = shapes.question(s, "exists", "zh", rng)
        color, shape = next(
            (c, k)
            for c in range(8)
            for k in range(4)
            if f"{shapes.COLORS_ZH[c]}的{shapes.SHAPES_ZH[k]}" in q
        )
        present = any(o.color == color and o.shape == shape for o in s)
        assert a == ("有" if present else "没有")
        q, a = shapes.question(s, "shape", "en", rng)
        cell = next(c for c in range(9) if q.endswith(f"at the {shapes.CELLS[c]}?"))
        assert a == shapes.SHAPES[next(o.shape for o in s if o.cell == cell)]


def test_parse_caption_inverts_caption_and_rejects_the_rest():
    for i in range(200):
        scene, _ = shapes.sample_scene("val", 3, i)
        for lang in shapes.LANGS:
            assert prompts.parse_caption(shapes.caption(scene, lang)) == (scene, lang)
    two = prompts.parse_caption(
        "A small blue square at the center and a large red circle at the top left"
    )
    assert two is not None and [o.cell for o in two[0]] == [0, 4]  # any order, sorted
    assert prompts.parse_caption("左上方有一个大的红色圆形，中间有一个小的蓝色正方形")[1] == "zh"
    for bad in (
        "a large red circle at the moon",
        "a large red circle",
        "a large red circle at the top and a small red square at the top",  # same cell twice
        " and ".join(["a large red circle at the top"] * 4),
        "",
    ):
        assert prompts.parse_caption(bad) is None, bad
