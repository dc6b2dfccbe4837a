"""The layouts of vilg, in one namespace: the ERNIE-ViLG patterns built here (`ernie_vilg`,
`schedule`), the generic pattern library (`causal`, `sliding_window`, `neighborhood_2d`, ...,
from `vilg.patterns`) and the `Layout` class they all return (`vilg.layout`).

`ernie_vilg` builds the exact masks of ERNIE-ViLG's sparse attention: row, column or
convolutional attention over an H x W grid of image tokens plus a text segment, in the
text->image direction ([text | image], causal) or image->text ([image | text]); plus "vqa",
image->text with the question in the bidirectional source, [question | image | answer].
docs/specification.md states each mask exactly.
"""

from __future__ import annotations

import torch

from vilg.layout import KeyHint, Layout, MaskMod, PatternSpec
from vilg.patterns import (
    axial,
    block_diagonal,
    causal,
    document,
    grid_shape,
    neighborhood_2d,
    sliding_window,
)

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "KeyHint",
    "Layout",
    "MaskMod",
    "PatternSpec",
    "axial",
    "block_diagonal",
    "causal",
    "document",
    "ernie_vilg",
    "neighborhood_2d",
    "schedule",
    "sliding_window",
]

KINDS = ("full", "row", "column", "conv")
DIRECTIONS = ("text2image", "image2text", "vqa")


def schedule(num_layers: int) -> list[str]:
    """Per-layer pattern of an N-layer ERNIE-ViLG stack: conv last, column when i % 4 == 2."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    kinds = ["column" if i % 4 == 2 else "row" for i in range(num_layers)]
    kinds[-1] = "conv"
    return kinds


def _pattern_mask_mod(spec: PatternSpec) -> MaskMod:
    T, (H, W), win = spec.text_len, spec.grid, spec.window // 2
    text2image, vqa = spec.direction == "text2image", spec.direction == "vqa"
    img0 = 0 if spec.direction == "image2text" else T  # first image position

    def image_pattern(qi, ki):
        qr, qc, kr, kc = qi // W, qi % W, ki // W, ki % W
        if spec.kind == "full":
            return torch.ones_like(qi, dtype=torch.bool) & torch.ones_like(ki, dtype=torch.bool)
        if spec.kind == "row":
            return qr == kr
        if spec.kind == "column":
            return qc == kc
        return ((qr - kr).abs() <= win) & ((qc - kc).abs() <= win)

    def mask_mod(q, k):
        q_img = (q >= img0) & (q < img0 + H * W)
        k_img = (k >= img0) & (k < img0 + H * W)
        q_txt, k_txt = ~q_img, ~k_img
        qi, ki = (q - img0).clamp(min=0), (k - img0).clamp(min=0)
        img_ok = k_img & image_pattern(qi, ki)
        if text2image:
            return (q_txt & k_txt) | (q_img & (k_txt | (img_ok & (ki <= qi))))
        if vqa:  # source = question + image (bidirectional), target = answer (causal)
            k_src = k < img0 + H * W
            q_ans = q >= img0 + H * W
            k_qst = k < img0
            return (q_txt & ((q_ans & (k <= q)) | k_src)) | (q_img & (k_qst | img_ok))
        return (q_txt & (k_img | (k_txt & (k <= q)))) | (q_img & img_ok)

    return mask_mod


def ernie_vilg(
    kind: str,
    text_len: int,
    grid: tuple[int, int],
    direction: str = "text2image",
    window: int = 11,
    block_size: int = 64,
    answer_len: int = 0,
) -> Layout:
    """The ERNIE-ViLG layout of one layer: `kind` in full|row|column|conv, sequence
    [text | image] (text2image) or [image | text] (image2text) with an H x W image grid.

    direction="vqa" is image->text with the question in the source (UniLM style): sequence
    [question (text_len) | image | answer (answer_len)]; question and image attend each other
    bidirectionally (image keys under the layer's pattern for image queries), the answer attends
    the whole source and itself causally. `text_lens` pads the question segment."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not isinstance(text_len, int) or text_len < 0:
        raise ValueError(f"text_len must be a non-negative int, got {text_len!r}")
    H, W = grid_shape(grid)
    if kind == "conv" and (not isinstance(window, int) or window < 1 or window % 2 == 0):
        raise ValueError(f"window must be a positive odd int, got {window!r}")
    if not isinstance(answer_len, int) or answer_len < 0 or (answer_len and direction != "vqa"):
        raise ValueError(f"answer_len must be a non-negative int (vqa only), got {answer_len!r}")
    spec = PatternSpec(kind, text_len, (H, W), direction, window, answer_len)
    L = text_len + H * W + answer_len
    img0 = 0 if direction == "image2text" else text_len
    txt0 = H * W if direction == "image2text" else 0
    perm = None
    if kind == "column":
        # column-major image order makes each column contiguous: column attention becomes row
        # attention on the transposed grid (and the causal cut stays a prefix of the column)
        col_major = torch.arange(H * W).reshape(H, W).t().flatten()
        perm = torch.arange(L)
        perm[img0 : img0 + H * W] = img0 + col_major
    return Layout(
        L,
        _pattern_mask_mod(spec),
        block_size=block_size,
        perm=perm,
        text_segment=(txt0, text_len),
        spec=spec,
    )
