"""The prompt grammar of the built-in shapes data: the equivalent wordings of a scene, per
language (documented in docs/prompts.md).

A prompt names 1-3 objects, each in its own cell, in any order. Every choice point below lists
its wordings, the canonical one first (what `shapes.caption` writes and the captioner emits):

    en  prompt := object (sep object)*        sep := " and " | ", " | ", and "
        object := np loc | "there is" np loc | loc "there is" np
        np     := "a" size colour shape        loc := ("at" | "in") "the" cell
    zh  prompt := object (sep object)*        sep := "," | "、" | "和"
        object := loc "有" np | np "在" loc | loc "是" np
        np     := "一个" size "的" colour shape

`sample` draws an order and a wording from a generator (training and the evaluation's
shuffled / paraphrased prompts), `parse` reads any of them back, and `closest` turns a prompt
outside the grammar into the nearest one inside it when it can.
"""

from __future__ import annotations

import difflib
import re
import unicodedata

import numpy as np

from vilg.app.data import shapes

# the synonyms of each attribute value, canonical first; hyphenated cells parse like spaced ones
SIZES_EN = (("large", "big"), ("small", "little"))
CELLS_EN = (
    ("top left", "top-left", "upper left"),
    ("top",),
    ("top right", "top-right", "upper right"),
    ("left",),
    ("center", "middle"),
    ("right",),
    ("bottom left", "bottom-left", "lower left"),
    ("bottom",),
    ("bottom right", "bottom-right", "lower right"),
)
PREPS_EN = ("at the", "in the")
FORMS_EN = ("{np} {loc}", "there is {np} {loc}", "{loc} there is {np}")
CELLS_ZH = (
    ("左上方", "左上角"),
    ("上方", "上面"),
    ("右上方", "右上角"),
    ("左侧", "左边"),
    ("中间", "中央"),
    ("右侧", "右边"),
    ("左下方", "左下角"),
    ("下方", "下面"),
    ("右下方", "右下角"),
)
FORMS_ZH = ("{loc}有{np}", "{np}在{loc}", "{loc}是{np}")
SEPS_ZH = (",", "、", "和")

assert all(c[0] == n for c, n in zip(CELLS_EN, shapes.CELLS))
assert all(c[0] == n for c, n in zip(CELLS_ZH, shapes.CELLS_ZH))
assert tuple(s[0] for s in SIZES_EN) == tuple(shapes.SIZES)


def _pick(options, rng):
    # one draw per choice point, however many options it has (rng.integers(1) draws nothing)
    return options[0] if rng is None else options[int(rng.random() * len(options))]


def render(objs, lang: str, rng: np.random.Generator | None = None) -> str:
    """The objects in the order given; rng None: the canonical wording, else a wording drawn
    uniformly at every choice point (the number of draws depends on len(objs) only, so two
    object lists of one length rendered from equal generators share their wording)."""
    if lang == "en":
        parts = []
        for o in objs:
            size, cell = _pick(SIZES_EN[o.size], rng), _pick(CELLS_EN[o.cell], rng)
            prep = _pick(PREPS_EN, rng)
            np_ = f"a {size} {shapes.COLORS[o.color]} {shapes.SHAPES[o.shape]}"
            parts.append(_pick(FORMS_EN, rng).format(np=np_, loc=f"{prep} {cell}"))
        style = _pick(("and", "comma", "oxford"), rng)
        if len(parts) == 1 or style == "and":
            return " and ".join(parts)
        last = " and " if style == "comma" else ", and "
        return ", ".join(parts[:-1]) + last + parts[-1]
    if lang == "zh":
        parts = []
        for o in objs:
            size, color = shapes.SIZES_ZH[o.size], shapes.COLORS_ZH[o.color]
            np_ = f"一个{size}的{color}{shapes.SHAPES_ZH[o.shape]}"
            loc = _pick(CELLS_ZH[o.cell], rng)
            parts.append(_pick(FORMS_ZH, rng).format(np=np_, loc=loc))
        return _pick(SEPS_ZH, rng).join(parts)
    raise ValueError(f"unknown language {lang!r}; expected 'en' or 'zh'")


def shuffled(scene, rng: np.random.Generator, differ: bool = False) -> list:
    """The scene's objects in a random order; differ=True never returns the cell order of a
    scene of two or more objects (the evaluation's shuffled prompts)."""
    objs = list(scene)
    while True:
        order = [objs[int(k)] for k in rng.permutation(len(objs))]
        if not differ or len(objs) < 2 or order != sorted(objs):
            return order


def sample(
    scene, lang: str, rng: np.random.Generator, shuffle: bool = True, paraphrase: float = 0.5
) -> str:
    """A training caption: objects in a random order (shuffle), and with probability
    `paraphrase` a random wording of the grammar instead of the canonical one."""
    objs = shuffled(scene, rng) if shuffle else list(scene)
    return render(objs, lang, rng if rng.random() < paraphrase else None)


def paraphrased(scene, lang: str, rng: np.random.Generator) -> str:
    """A random order and a random wording that differs from the canonical caption."""
    canon = shapes.caption(scene, lang)
    while True:
        text = render(shuffled(scene, rng), lang, rng)
        if text != canon:
            return text


# ----------------------------------------------------------------------------- parsing


def _alt(options) -> str:
    return "(" + "|".join(re.escape(w) for w in sorted(options, key=len, reverse=True)) + ")"


def _normalize(text: str, lang: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = re.sub(r"[.!。！]+$", "", text).strip()
    if lang == "zh":
        return text.replace(" ", "")
    text = re.sub(r"\s*-\s*", " ", text)  # "bottom-right", "bottom - right" -> "bottom right"
    text = re.sub(r"\s*,\s*", ", ", text)
    return " ".join(text.split())


def _lookup(table) -> dict:
    """word -> index for a table of synonym tuples (hyphens read as spaces)."""
    return {w.replace("-", " "): i for i, words in enumerate(table) for w in words}


_EN = {
    "size": _lookup(SIZES_EN),
    "color": {w: i for i, w in enumerate(shapes.COLORS)},
    "shape": {w: i for i, w in enumerate(shapes.SHAPES)},
    "cell": _lookup(CELLS_EN),
}
_ZH = {
    "size": {w: i for i, w in enumerate(shapes.SIZES_ZH)},
    "color": {w: i for i, w in enumerate(shapes.COLORS_ZH)},
    "shape": {w: i for i, w in enumerate(shapes.SHAPES_ZH)},
    "cell": _lookup(CELLS_ZH),
}
_NP_EN = f"a {_alt(_EN['size'])} {_alt(_EN['color'])} {_alt(_EN['shape'])}"
_LOC_EN = f"(?:at|in) the {_alt(_EN['cell'])}"
_NP_ZH = f"一个{_alt(_ZH['size'])}的{_alt(_ZH['color'])}{_alt(_ZH['shape'])}"
_LOC_ZH = _alt(_ZH["cell"])
# per form: its regex and the attribute of each group, in order
_OBJECT = {
    "en": [
        (re.compile(f"{_NP_EN} {_LOC_EN}"), ("size", "color", "shape", "cell")),
        (re.compile(f"there is {_NP_EN} {_LOC_EN}"), ("size", "color", "shape", "cell")),
        (re.compile(f"{_LOC_EN} there is {_NP_EN}"), ("cell", "size", "color", "shape")),
    ],
    "zh": [
        (re.compile(f"{_LOC_ZH}有{_NP_ZH}"), ("cell", "size", "color", "shape")),
        (re.compile(f"{_NP_ZH}在{_LOC_ZH}"), ("size", "color", "shape", "cell")),
        (re.compile(f"{_LOC_ZH}是{_NP_ZH}"), ("cell", "size", "color", "shape")),
    ],
}
_SEP = {"en": re.compile(r",? and |, "), "zh": re.compile(r"[,、和]")}
_WORDS = {"en": _EN, "zh": _ZH}


def _language(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def parse(text: str) -> tuple[list, str] | None:
    """(objects in the prompt's order, language) when `text` is in the grammar, else None."""
    lang = _language(text)
    words, objs = _WORDS[lang], []
    for part in _SEP[lang].split(_normalize(text, lang)):
        for rx, fields in _OBJECT[lang]:
            m = rx.fullmatch(part)
            if m:
                a = {f: words[f][m.group(k + 1)] for k, f in enumerate(fields)}
                objs.append(shapes.Obj(a["cell"], a["shape"], a["color"], a["size"]))
                break
        else:
            return None
    if not 1 <= len(objs) <= 3 or len({o.cell for o in objs}) != len(objs):
        return None
    return objs, lang


def parse_caption(text: str) -> tuple[tuple, str] | None:
    """(scene, language): `parse` with the objects sorted into a scene (cell order)."""
    parsed = parse(text)
    return None if parsed is None else (tuple(sorted(parsed[0])), parsed[1])


def is_canonical(text: str) -> bool:
    """Whether the prompt is its scene's canonical caption (cell order, canonical wording), up
    to case, spacing, final punctuation and full-width forms."""
    parsed = parse_caption(text)
    if parsed is None:
        return False
    scene, lang = parsed
    return _normalize(text, lang) == _normalize(shapes.caption(scene, lang), lang)


def closest(text: str) -> tuple[list, str, str] | None:
    """For a prompt outside the grammar: (objects, language, the nearest in-grammar prompt)
    when every part names a colour, a shape and a cell (misspelt English words are matched to
    the grammar's words; a missing size reads as large), else None."""
    lang = _language(text)
    norm = _normalize(text, lang)
    words = _WORDS[lang]
    vocab = sorted({w for table in words.values() for k in table for w in k.split()})
    objs = []
    for part in _SEP[lang].split(norm):
        if lang == "en":
            for v in ("top", "bottom", "upper", "lower"):  # "left top" -> "top left"
                for h in ("left", "right"):
                    part = part.replace(f"{h} {v}", f"{v} {h}")
            fixed = []
            for w in part.split():
                near = difflib.get_close_matches(w, vocab, n=1, cutoff=0.8)
                fixed.append(near[0] if near else w)
            part = " " + " ".join(fixed) + " "
        found = {}
        for field, table in words.items():
            for w in sorted(table, key=len, reverse=True):  # "top left" before "top"
                if (f" {w} " if lang == "en" else w) in part:
                    found[field] = table[w]
                    break
        if not {"color", "shape", "cell"} <= set(found):
            return None
        size = found.get("size", 0)
        objs.append(shapes.Obj(found["cell"], found["shape"], found["color"], size))
    if not 1 <= len(objs) <= 3 or len({o.cell for o in objs}) != len(objs):
        return None
    return objs, lang, render(objs, lang)


def corpus_text(seed: int = 0, n: int = 2000) -> list[str]:
    """The text tokenizer's training corpus for the shapes data: captions and questions of n
    train scenes (`shapes.all_corpus_text`) and the prompt grammar's wordings."""
    scenes = [shapes.sample_scene("train", seed, i)[0] for i in range(n)]
    return shapes.all_corpus_text(seed, n) + corpus(scenes, np.random.default_rng([seed, 31]))


def corpus(scenes, rng: np.random.Generator) -> list[str]:
    """Every synonym of the grammar once, then one random wording per scene and language: the
    text tokenizer's share of the grammar."""
    out = [" ".join(w for table in (SIZES_EN, CELLS_EN) for t in table for w in t)]
    out.append("".join(w for t in CELLS_ZH for w in t) + "".join(SEPS_ZH) + "在是")
    out.append("there is " + " ".join(PREPS_EN))
    for scene in scenes:
        for lang in shapes.LANGS:
            out.append(render(shuffled(scene, rng), lang, rng))
    return out


# ----------------------------------------------------------------------------- training pairs


def perturb_objects(objs, rng: np.random.Generator) -> list:
    """The objects, in their order, with one attribute (shape, colour, size or cell) of one
    object changed: a hard negative for the matcher."""
    objs = list(objs)
    k = int(rng.integers(len(objs)))
    o = objs[k]
    attr = int(rng.integers(4))
    if attr == 0:
        o = shapes.Obj(o.cell, (o.shape + 1 + int(rng.integers(3))) % 4, o.color, o.size)
    elif attr == 1:
        o = shapes.Obj(o.cell, o.shape, (o.color + 1 + int(rng.integers(7))) % 8, o.size)
    elif attr == 2:
        o = shapes.Obj(o.cell, o.shape, o.color, 1 - o.size)
    else:
        free = [c for c in range(9) if c not in {p.cell for p in objs}]
        o = shapes.Obj(free[int(rng.integers(len(free)))], o.shape, o.color, o.size)
    objs[k] = o
    return objs


def caption_pair(
    scene, lang: str, rng: np.random.Generator, shuffle: bool = True, paraphrase: float = 0.5
) -> tuple[str, str]:
    """A training caption of the scene (random order and, with probability `paraphrase`, a
    random wording) and its hard negative: one attribute changed, same order and wording, so
    that neither order nor wording tells the two apart."""
    objs = shuffled(scene, rng) if shuffle else list(scene)
    wording = int(rng.integers(2**32)) if rng.random() < paraphrase else None

    def say(o):
        return render(o, lang, None if wording is None else np.random.default_rng(wording))

    return say(objs), say(perturb_objects(objs, rng))
