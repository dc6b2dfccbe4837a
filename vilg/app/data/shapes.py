"""The built-in bilingual captioned-shapes dataset (defined in docs/specification.md).

Every sample is a pure function of (split, seed, index): a scene is drawn from a generator
seeded with those numbers, and a split is assigned by hashing the scene itself, so that
train / val / test never share a scene (rejection-sample until the hash lands in the split).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ["circle", "square", "triangle", "diamond"]
SHAPES_ZH = ["圆形", "正方形", "三角形", "菱形"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"]
COLORS_ZH = ["红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "青色", "白色"]
RGB = np.array(
    [
        [220, 40, 40],
        [40, 180, 60],
        [50, 90, 230],
        [240, 220, 40],
        [150, 60, 200],
        [250, 140, 30],
        [40, 210, 220],
        [240, 240, 240],
    ],
    dtype=np.uint8,
)
SIZES = ["large", "small"]
SIZES_ZH = ["大", "小"]
CELLS = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
]
CELLS_ZH = ["左上方", "上方", "右上方", "左侧", "中间", "右侧", "左下方", "下方", "右下方"]
COUNTS = ["one", "two", "three"]
COUNTS_ZH = ["一个", "两个", "三个"]
YESNO = ["yes", "no"]
YESNO_ZH = ["有", "没有"]
SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
LANGS = ("en", "zh")


@dataclass(frozen=True, order=True)
class Obj:
    cell: int
    shape: int
    color: int
    size: int  # 0 large, 1 small


Scene = tuple  # tuple[Obj, ...] sorted by cell (raster order)


def scene_key(scene: Scene) -> str:
    return ";".join(f"{o.cell}{o.shape}{o.color}{o.size}" for o in scene)


def scene_split(scene: Scene) -> str:
    """Split of a scene: a hash of the scene only (independent of seed and index)."""
    h = hashlib.blake2b(scene_key(scene).encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2.0**64
    for name, (lo, hi) in SPLITS.items():
        if lo <= u < hi:
            return name
    return "test"


# P(1, 2, 3 objects) of the benchmark's scenes (val and test splits, and train by default)
COUNT_PROBS = (0.4, 0.4, 0.2)


def check_count_probs(count_probs) -> tuple:
    try:
        p = tuple(float(x) for x in count_probs)
    except (TypeError, ValueError):
        p = ()
    if len(p) != 3 or min(p) < 0 or not np.isfinite(p).all() or sum(p) <= 0:
        raise ValueError(
            "count_probs must be three non-negative weights for 1, 2 and 3 objects, "
            f"got {count_probs!r}"
        )
    return tuple(x / sum(p) for x in p)


def random_scene(rng: np.random.Generator, count_probs=COUNT_PROBS) -> Scene:
    n = int(rng.choice(3, p=count_probs)) + 1
    cells = sorted(rng.choice(9, size=n, replace=False).tolist())
    return tuple(
        Obj(c, int(rng.integers(4)), int(rng.integers(8)), int(rng.integers(2))) for c in cells
    )


def sample_scene(
    split: str, seed: int, index: int, count_probs=COUNT_PROBS
) -> tuple[Scene, np.random.Generator]:
    """Scene i of a split; also returns the generator (for questions) in its post-scene state.
    Membership of a split depends on the scene alone, so a training pool drawn with other
    count_probs still never holds a val or test scene."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    count_probs = check_count_probs(count_probs)
    attempt = 0
    while True:
        rng = np.random.default_rng([seed, SPLIT_IDS[split], index, attempt])
        scene = random_scene(rng, count_probs)
        if scene_split(scene) == split:
            return scene, rng
        attempt += 1


# ----------------------------------------------------------------------------- rendering


def shape_mask(shape: int, size: int, side: int, cy: float, cx: float, extent: int):
    """Boolean mask [extent, extent]: pixel centres inside the shape (no anti-aliasing)."""
    cell = side / 3.0
    half = (0.9 if size == 0 else 0.5) * cell / 2.0
    ys, xs = np.mgrid[0:extent, 0:extent].astype(np.float64) + 0.5
    dy, dx = ys - cy, xs - cx
    if shape == 0:
        return dx * dx + dy * dy <= half * half
    if shape == 1:
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == 2:  # apex (cx, cy-half), base on y = cy+half from cx-half to cx+half
        return (dy <= half) & (np.abs(dx) <= (dy + half) / 2.0)
    return np.abs(dx) + np.abs(dy) <= half


def cell_center(cell: int, side: int) -> tuple[float, float]:
    c = side / 3.0
    return (cell // 3 + 0.5) * c, (cell % 3 + 0.5) * c


def render(scene: Scene, side: int = 64) -> np.ndarray:
    """uint8 [side, side, 3] image of a scene on a black background."""
    if not 24 <= side <= 256:  # the spec's default (64) is not a multiple of 3, so allow any
        raise ValueError(f"image side must be between 24 and 256 pixels, got {side}")
    img = np.zeros((side, side, 3), dtype=np.uint8)
    cell = side / 3.0
    for o in scene:
        cy, cx = cell_center(o.cell, side)
        # draw inside the object's own cell only (an object never leaves its cell)
        y0, x0 = int(cy - cell / 2), int(cx - cell / 2)
        ext = int(np.ceil(cell)) + 1
        y1, x1 = min(y0 + ext, side), min(x0 + ext, side)
        m = shape_mask(o.shape, o.size, side, cy - y0, cx - x0, ext)[: y1 - y0, : x1 - x0]
        img[y0:y1, x0:x1][m] = RGB[o.color]
    return img


# ----------------------------------------------------------------------------- text


def caption(scene: Scene, lang: str = "en") -> str:
    if lang == "en":
        return " and ".join(
            f"a {SIZES[o.size]} {COLORS[o.color]} {SHAPES[o.shape]} at the {CELLS[o.cell]}"
            for o in scene
        )
    if lang == "zh":
        return ",".join(
            f"{CELLS_ZH[o.cell]}有一个{SIZES_ZH[o.size]}的{COLORS_ZH[o.color]}{SHAPES_ZH[o.shape]}"
            for o in scene
        )
    raise ValueError(f"unknown language {lang!r}; expected 'en' or 'zh'")


QUESTION_KINDS = ("color", "shape", "where", "count", "exists")


def question(scene: Scene, kind: str, lang: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) pair of the given kind about a scene."""
    en = lang == "en"
    if kind in ("color", "shape"):
        o = scene[int(rng.integers(len(scene)))]
        if kind == "color":
            q = (
                f"what color is the {SHAPES[o.shape]} at the {CELLS[o.cell]}?"
                if en
                else f"{CELLS_ZH[o.cell]}的{SHAPES_ZH[o.shape]}是什么颜色?"
            )
            return q, (COLORS if en else COLORS_ZH)[o.color]
        q = f"what shape is at the {CELLS[o.cell]}?" if en else f"{CELLS_ZH[o.cell]}是什么形状?"
        return q, (SHAPES if en else SHAPES_ZH)[o.shape]
    if kind == "where":
        pairs = [(o.color, o.shape) for o in scene]
        unique = [o for o in scene if pairs.count((o.color, o.shape)) == 1]
        o = unique[int(rng.integers(len(unique)))] if unique else scene[0]
        q = (
            f"where is the {COLORS[o.color]} {SHAPES[o.shape]}?"
            if en
            else f"{COLORS_ZH[o.color]}{SHAPES_ZH[o.shape]}在哪里?"
        )
        return q, (CELLS if en else CELLS_ZH)[o.cell]
    if kind == "count":
        q = "how many objects are there?" if en else "有几个物体?"
        return q, (COUNTS if en else COUNTS_ZH)[len(scene) - 1]
    if kind == "exists":
        present = {(o.color, o.shape) for o in scene}
        if rng.random() < 0.5:
            color, shape = sorted(present)[int(rng.integers(len(present)))]
        else:
            absent = [(c, s) for c in range(8) for s in range(4) if (c, s) not in present]
            color, shape = absent[int(rng.integers(len(absent)))]
        q = (
            f"is there a {COLORS[color]} {SHAPES[shape]}?"
            if en
            else f"有{COLORS_ZH[color]}的{SHAPES_ZH[shape]}吗?"
        )
        return q, (YESNO if en else YESNO_ZH)[0 if (color, shape) in present else 1]
    raise ValueError(f"unknown question kind {kind!r}")


def all_corpus_text(seed: int = 0, n: int = 2000) -> list[str]:
    """Captions and QA text of n train scenes in both languages (tokenizer training corpus;
    `prompts.corpus_text` adds the prompt grammar's wordings)."""
    out = []
    for i in range(n):
        scene, rng = sample_scene("train", seed, i)
        for lang in LANGS:
            out.append(caption(scene, lang))
            for kind in QUESTION_KINDS:
                out.extend(question(scene, kind, lang, rng))
    return out


# ----------------------------------------------------------------------------- dataset


class ShapesDataset(torch.utils.data.Dataset):
    """Sample i -> dict(image float [3,S,S] in [0,1], captions, one VQA pair per language)."""

    def __init__(
        self, split: str = "train", size: int = 10000, seed: int = 0, image_size: int = 64
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        render((), image_size)  # validates the size
        self.split, self.size, self.seed, self.image_size = split, size, seed, image_size

    def __len__(self):
        return self.size

    def scene(self, i: int) -> Scene:
        return sample_scene(self.split, self.seed, i)[0]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(i)
        scene, rng = sample_scene(self.split, self.seed, i)
        img = torch.from_numpy(render(scene, self.image_size)).permute(2, 0, 1).float() / 255
        item = {"image": img, "scene": scene, "index": i}
        for lang in LANGS:
            item[f"caption_{lang}"] = caption(scene, lang)
            kind = QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))]
            item[f"question_{lang}"], item[f"answer_{lang}"] = question(scene, kind, lang, rng)
        return item
