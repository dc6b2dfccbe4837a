"""Image arrays to files: uint8 conversion and PNG grids (used by training and inference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, S, S] float in [0,1] -> [..., S, S, 3] uint8."""
    x = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> None:
    """images [K, 3, S, S] -> PNG grid (nearest upscaled by `scale`)."""
    from PIL import Image

    arr = to_uint8(images)
    K, S = arr.shape[0], arr.shape[1]
    ncol = min(nrow, K)
    nr = (K + ncol - 1) // ncol
    grid = np.full((nr * (S + 2), ncol * (S + 2), 3), 40, dtype=np.uint8)
    for i in range(K):
        r, c = divmod(i, ncol)
        grid[r * (S + 2) + 1 : r * (S + 2) + 1 + S, c * (S + 2) + 1 : c * (S + 2) + 1 + S] = arr[i]
    im = Image.fromarray(grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
