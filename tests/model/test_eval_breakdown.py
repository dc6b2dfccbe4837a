"""The evaluation's per-object-count breakdown, driven by a pipeline stand-in that is right
exactly on the 1-object scenes."""

import numpy as np
import torch

from vilg.app.data import shapes
from vilg.app.eval.evaluate import eval_captions, eval_vqa


class RightOnSingleObjects:
    def __init__(self, scenes):
        self.scenes = scenes
        self.questions, self.answers = [], []  # the evaluation's own draw, replayed

    def caption(self, images, lang, beam=1):
        return [
            shapes.caption(self.scenes[i], lang) if len(self.scenes[i]) == 1 else "wrong"
            for i in images.tolist()
        ]

    def answer(self, images, question):
        assert all(self.questions[i] == question for i in images.tolist())
        return [self.answers[i] if len(self.scenes[i]) == 1 else "wrong" for i in images.tolist()]


def test_accuracy_is_broken_down_by_object_count():
    scenes = [shapes.sample_scene("test", 0, i)[0] for i in range(60)]
    assert {len(s) for s in scenes} == {1, 2, 3}
    images = torch.arange(len(scenes))
    pipe = RightOnSingleObjects(scenes)
    cap = eval_captions(pipe, images, scenes, "en", batch=7)
    share = np.mean([len(s) == 1 for s in scenes])
    assert cap["exact_by_objects"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert abs(cap["exact"] - share) < 1e-4

    rng = np.random.default_rng([0, 77])  # eval_vqa's draw for seed 0
    qa = [
        shapes.question(s, shapes.QUESTION_KINDS[i % len(shapes.QUESTION_KINDS)], "zh", rng)
        for i, s in enumerate(scenes)
    ]
    pipe.questions, pipe.answers = [q for q, _ in qa], [a for _, a in qa]
    vqa = eval_vqa(pipe, images, scenes, "zh", seed=0)
    assert vqa["by_objects"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert abs(vqa["accuracy"] - share) < 1e-4
