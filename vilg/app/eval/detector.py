"""Hand-written detector of the shapes renderer's attributes (no learning).

Per cell of the 3x3 grid: foreground = pixels whose brightest channel exceeds a threshold
(the background is black and every palette colour has a channel >= 180). Too few foreground
pixels -> empty cell. Colour = palette entry nearest to the median foreground RGB.
Shape and size = the (shape, size) template, rendered at the cell centre exactly as the
renderer draws it, with the highest IoU against the foreground mask; an object whose best
IoU is below `min_iou` is reported as unrecognised (shape=-1), which scores as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vilg.app.data.shapes import RGB, Obj, Scene, cell_center, shape_mask


@dataclass(frozen=True)
class Detection:
    cell: int
    shape: int  # -1 when unrecognised
    color: int
    size: int
    iou: float


def _cell_bounds(cell: int, side: int) -> tuple[int, int, int, int]:
    c = side / 3.0
    r, k = divmod(cell, 3)
    return round(r * c), round((r + 1) * c), round(k * c), round((k + 1) * c)


@lru_cache(maxsize=64)
def _templates(side: int) -> dict:
    """(cell, shape, size) -> mask cropped to the cell, drawn by the renderer's own rule."""
    out = {}
    for cell in range(9):
        y0, y1, x0, x1 = _cell_bounds(cell, side)
        cy, cx = cell_center(cell, side)
        for shape in range(4):
            for size in range(2):
                full = shape_mask(shape, size, side, cy, cx, side)
                out[cell, shape, size] = full[y0:y1, x0:x1]
    return out


def detect(
    image: np.ndarray, threshold: int = 90, min_frac: float = 0.4, min_iou: float = 0.5
) -> list[Detection]:
    """image: uint8 [S, S, 3] (or float in [0,1]). Returns detections in raster cell order."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    side = img.shape[0]
    temps = _templates(side)
    smallest = min(int(temps[4, s, 1].sum()) for s in range(4))
    dets = []
    for cell in range(9):
        y0, y1, x0, x1 = _cell_bounds(cell, side)
        crop = img[y0:y1, x0:x1].astype(np.int32)
        fg = crop.max(-1) > threshold
        if fg.sum() < min_frac * smallest:
            continue
        rgb = np.median(crop[fg], axis=0)
        color = int(((RGB.astype(np.float64) - rgb) ** 2).sum(1).argmin())
        best, best_iou = (-1, 0), 0.0
        for shape in range(4):
            for size in range(2):
                t = temps[cell, shape, size]
                iou = (t & fg).sum() / max((t | fg).sum(), 1)
                if iou > best_iou:
                    best, best_iou = (shape, size), float(iou)
        shape, size = best if best_iou >= min_iou else (-1, best[1])
        dets.append(Detection(cell, shape, color, size, best_iou))
    return dets


def score(image: np.ndarray, scene: Scene) -> dict:
    """Compare detections with the prompt's scene.

    Returns per-attribute hit counts over the prompt's objects, whether the image has no
    extra objects, and `correct`: every object right in shape, colour, size and cell, and
    nothing else in the image.
    """
    dets = {d.cell: d for d in detect(image)}
    hits = {"shape": 0, "color": 0, "size": 0, "cell": 0}
    all_right = True
    for o in scene:
        d = dets.get(o.cell)
        ok = {
            "cell": d is not None,
            "shape": d is not None and d.shape == o.shape,
            "color": d is not None and d.color == o.color,
            "size": d is not None and d.size == o.size,
        }
        for k, v in ok.items():
            hits[k] += int(v)
        all_right &= all(ok.values())
    extra = [c for c in dets if c not in {o.cell for o in scene}]
    return {
        "objects": len(scene),
        **hits,
        "no_extra": not extra,
        "correct": bool(all_right and not extra),
    }


def detections_to_scene(dets: list[Detection]) -> Scene:
    return tuple(Obj(d.cell, d.shape, d.color, d.size) for d in dets)
