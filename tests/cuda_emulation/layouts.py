"""Layouts for the emulation harness, written as the binary files harness.cpp reads."""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from vilg.layouts import Layout, causal, ernie_vilg, sliding_window


def dump(layout: Layout, path: Path) -> None:
    a = layout._arrays
    ts, tl = layout.kernel_text_segment
    perm = a["perm"]
    with open(path, "wb") as f:
        head = (
            layout.seq_len,
            layout.block_size,
            layout.num_blocks,
            ts,
            tl,
            a["q_kv"].numel(),
            a["masks"].shape[0],
            0 if perm is None else 1,
            layout.q_len,
            layout.num_q_blocks,
        )
        f.write(struct.pack("<10i", *head))
        for n in ("q_ptr", "q_kv", "q_mask", "k_ptr", "k_q", "k_mask"):
            f.write(a[n].to(torch.int32).contiguous().numpy().tobytes())
        f.write(a["masks"].to(torch.int64).contiguous().numpy().tobytes())
        if perm is not None:
            f.write(perm.to(torch.int32).contiguous().numpy().tobytes())


def write_all(out: Path) -> list[str]:
    """Every kind x direction on an odd and an even grid, plus random masks with an empty row,
    an empty column, L < 64, and an empty query tile next to an empty key tile."""
    names = []
    for kind in ("full", "row", "column", "conv"):
        for direction in ("text2image", "image2text"):
            for tag, text, grid in (("odd", 21, (9, 11)), ("even", 64, (8, 8))):
                name = f"{kind}_{direction}_{tag}"
                dump(
                    ernie_vilg(kind, text, grid, direction=direction, window=5), out / f"{name}.bin"
                )
                names.append(name)
    g = torch.Generator().manual_seed(0)
    m = torch.rand(150, 150, generator=g) < 0.3
    m[5, :] = False
    m[:, 70] = False
    dump(Layout.from_dense(m), out / "random_150.bin")
    m = torch.rand(40, 40, generator=g) < 0.5
    dump(Layout.from_dense(m), out / "random_40.bin")
    m = torch.rand(200, 200, generator=g) < 0.4
    m[:64, :] = False
    m[:, 64:128] = False
    dump(Layout.from_dense(m), out / "holes_200.bin")
    # rectangular (a chunk of queries against a longer KV cache), GQA ("gqa_": 2 q heads per
    # k/v head), and both, with padding via a text prefix
    dump(causal(203).last_queries(70), out / "chunk_causal_203_70.bin")
    dump(sliding_window(150, 37, prefix=5).last_queries(41), out / "chunk_window_155_41.bin")
    dump(causal(100, prefix=7), out / "gqa_causal_107.bin")
    dump(sliding_window(190, 50, prefix=9).last_queries(130), out / "gqa_chunk_window_199_130.bin")
    # flash-attn's non-causal chunks (vilg.flash_attn): queries that see keys after their own
    # position (cross-attention, a window reaching right)
    from vilg.flash_attn import _build_layout

    dump(_build_layout(40, 150, -1, -1), out / "flash_cross_150_40.bin")
    dump(_build_layout(33, 90, 10, 7), out / "flash_window_90_33.bin")
    extra = [
        "flash_cross_150_40",
        "flash_window_90_33",
        "chunk_causal_203_70",
        "chunk_window_155_41",
        "gqa_causal_107",
        "gqa_chunk_window_199_130",
    ]
    return names + ["random_150", "random_40", "holes_200"] + extra
