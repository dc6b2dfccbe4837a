"""Independent references the kernels are tested against (float64, dense, straightforward)."""

from __future__ import annotations

import math

import torch


def spec_mask(kind, text_len, grid, direction, window=11, answer_len=0) -> torch.Tensor:
    """The mask of attention-patterns.md, built element by element in plain Python.

    direction="vqa": [question (text_len) | image | answer (answer_len)], question and image
    bidirectional source, answer causal over everything before it."""
    T, (H, W), A = text_len, grid, answer_len
    N = H * W
    L, half = T + N + A, window // 2

    def pattern(qi, ki):
        (qr, qc), (kr, kc) = divmod(qi, W), divmod(ki, W)
        return {
            "full": True,
            "row": qr == kr,
            "column": qc == kc,
            "conv": abs(qr - kr) <= half and abs(qc - kc) <= half,
        }[kind]

    m = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            if direction == "text2image":
                if q < T:
                    ok = k < T
                else:
                    ok = k < T or (pattern(q - T, k - T) and k <= q)
            elif direction == "vqa":
                if q < T:  # question: the whole source
                    ok = k < T + N
                elif q < T + N:  # image: the question and its pattern
                    ok = k < T or (T <= k < T + N and pattern(q - T, k - T))
                else:  # answer: source and earlier answer tokens
                    ok = k <= q
            else:
                if q >= H * W:
                    ok = k < H * W or k <= q
                else:
                    ok = k < H * W and pattern(q, k)
            m[q, k] = ok
    return m


def attention(q, k, v, mask, scale=None, text_lens=None, text_segment=(0, 0)):
    """Dense masked softmax attention in float64; rows with no allowed key give 0."""
    q, k, v = (t.detach().double() if not t.requires_grad else t.double() for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    m = mask.to(q.device).expand(q.shape[0], 1, *mask.shape).clone()
    if text_lens is not None:
        start, n = text_segment
        for b, t in enumerate(torch.as_tensor(text_lens).tolist()):
            m[b, :, :, start + t : start + n] = False
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~m, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def attention_mod(
    q,
    k,
    v,
    mask,
    scale=None,
    softcap=0.0,
    alibi=None,
    key_starts=None,
    key_lens=None,
    text_lens=None,
    text_segment=(0, 0),
):
    """Dense float64 attention with the score modifiers, written from their definitions:
    s = scale q.k; s = softcap tanh(s / softcap) when softcap > 0; s -= slope |i - j| with i the
    query's sequence position (q's rows are the last q_len positions) and j the key's; keys
    outside [key_starts[b], key_lens[b]) and padded text masked. GQA: k, v with fewer heads are
    repeated (q head h reads k/v head h // group). Rows with no allowed key give 0."""
    q, k, v = (t.double() for t in (q, k, v))
    B, H, Lq, D = q.shape
    L = k.shape[2]
    g = H // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if alibi is not None:
        i = torch.arange(L - Lq, L, dtype=torch.float64)[:, None]
        j = torch.arange(L, dtype=torch.float64)[None, :]
        slopes = alibi.double().reshape(-1 if alibi.dim() == 1 else B, H, 1, 1)
        s = s - slopes * (i - j).abs()
    m = mask.expand(B, 1, Lq, L).clone()
    for b in range(B):
        if key_starts is not None:
            m[b, :, :, : int(key_starts[b])] = False
        if key_lens is not None:
            m[b, :, :, int(key_lens[b]) :] = False
        if text_lens is not None:
            start, n = text_segment
            m[b, :, :, start + int(text_lens[b]) : start + n] = False
    p = torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1).nan_to_num(0.0)
    return p @ v
