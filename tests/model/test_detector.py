import numpy as np
import pytest

from vilg.app.data.shapes import Obj, render, sample_scene
from vilg.app.eval.detector import detect, detections_to_scene, score


@pytest.mark.parametrize("side", [64, 48, 27, 36, 96])
def test_detector_is_exact_on_ground_truth(side):
    for i in range(150):
        s = sample_scene("test", 1, i)[0]
        img = render(s, side)
        assert detections_to_scene(detect(img)) == s
        assert score(img, s)["correct"]


def test_detector_catches_each_kind_of_error():
    s = (Obj(0, 0, 0, 0), Obj(4, 1, 2, 1))
    wrong = {
        "shape": (Obj(0, 3, 0, 0), Obj(4, 1, 2, 1)),
        "color": (Obj(0, 0, 5, 0), Obj(4, 1, 2, 1)),
        "size": (Obj(0, 0, 0, 1), Obj(4, 1, 2, 1)),
        "cell": (Obj(1, 0, 0, 0), Obj(4, 1, 2, 1)),
    }
    for attr, w in wrong.items():
        r = score(render(w, 64), s)
        assert not r["correct"]
        assert r[attr] == 1, attr  # exactly one object wrong in that attribute
    extra = render(s + (Obj(8, 2, 1, 0),), 64)
    r = score(extra, s)
    assert not r["correct"] and not r["no_extra"]
    assert detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_detector_tolerates_mild_noise():
    rng = np.random.default_rng(0)
    s = sample_scene("test", 0, 5)[0]
    img = render(s, 48).astype(np.int32) + rng.integers(-20, 21, (48, 48, 3))
    assert score(np.clip(img, 0, 255).astype(np.uint8), s)["correct"]
