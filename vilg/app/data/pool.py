"""In-memory training pools: images (uint8) with their texts, built once per run.

A pool is a list of items with a fixed order, so a batch is a pure function of
(seed, step): the trainers draw indices from `numpy.random.default_rng([seed, step, ...])`.
The shapes pool also knows each scene, so it can ask fresh VQA questions about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vilg.app.data import shapes


@dataclass
class Pool:
    images: np.ndarray  # uint8 [N, S, S, 3]
    texts: dict[str, list[str]]  # language -> caption per image ("raw" for user data)
    scenes: list | None = None  # shapes scenes, enables VQA
    stats: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.images)

    @property
    def langs(self) -> list[str]:
        return list(self.texts)

    def image_tensor(self, idx) -> torch.Tensor:
        return torch.from_numpy(self.images[np.asarray(idx)]).permute(0, 3, 1, 2).float() / 255

    def question(
        self, i: int, lang: str, rng: np.random.Generator, weights: dict | None = None
    ) -> tuple[str, str] | None:
        """A random question about scene i; `weights` (kind -> probability) skews the kinds."""
        if self.scenes is None:
            return None
        kinds = shapes.QUESTION_KINDS
        if weights:
            p = np.array([weights.get(k, 0.0) for k in kinds], dtype=np.float64)
            kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        else:
            kind = kinds[int(rng.integers(len(kinds)))]
        return shapes.question(self.scenes[i], kind, lang, rng)


def shapes_pool(
    split: str, n: int, seed: int = 0, image_size: int = 48, count_probs=shapes.COUNT_PROBS
) -> Pool:
    scenes = [shapes.sample_scene(split, seed, i, count_probs)[0] for i in range(n)]
    images = np.stack([shapes.render(s, image_size) for s in scenes])
    texts = {lang: [shapes.caption(s, lang) for s in scenes] for lang in shapes.LANGS}
    return Pool(images, texts, scenes)
