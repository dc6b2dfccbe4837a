"""Fused decoding attention: one generation step over a KV cache, restricted to a layout.

Two ways in: `decode_attention` (one call, every argument checked) and `DecodePlan` (the cache,
layout and padding of one generation checked once; each step then costs one kernel call, with
the position given as an int or as a device tensor, so a step can be CUDA-graph captured or
compiled without a recompile per position).
"""

from __future__ import annotations

import math

import torch

from vilg._ext import C
from vilg.layouts import Layout
from vilg.ops import _validate
from vilg.ops._arrays import accepts_arrays
from vilg.ops._buffers import profiled, ref, stream_of


# The schema is written out: torch before 2.7 cannot infer it from string annotations
# (tests/test_torch_compat.py checks it against the inferred one).
@torch.library.custom_op(
    "vilg::decode_attention",
    mutates_args=(),
    schema=(
        "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor keys, Tensor? text_lens, "
        "SymInt text_start, SymInt text_len, float scale, Tensor? key_ptr=None, "
        "Tensor? pos=None, SymInt max_keys=0) -> Tensor"
    ),
)
def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    keys: torch.Tensor,
    text_lens: torch.Tensor | None,
    text_start: int,
    text_len: int,
    scale: float,
    key_ptr: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    max_keys: int = 0,
) -> torch.Tensor:
    B, H, D = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    ws, splits = None, 1
    if q.is_cuda:  # split-K sized for the longest key list the call may see
        splits = C().decode_splits(B, H, max_keys or keys.numel(), q.device.index)
        if splits > 1:
            n = C().decode_workspace_floats(B, H, D, splits)
            ws = torch.empty(n, dtype=torch.float32, device=q.device)
    C().decode_attention(
        ref(q), ref(k_cache), ref(v_cache), ref(keys), ref(out), ref(ws), splits,
        ref(text_lens), text_start, text_len, scale, stream_of(q), ref(key_ptr), ref(pos),
    )  # fmt: skip
    return out


@_decode.register_fake
def _(
    q,
    k_cache,
    v_cache,
    keys,
    text_lens,
    text_start,
    text_len,
    scale,
    key_ptr=None,
    pos=None,
    max_keys=0,
):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _scale(scale, D: int) -> float:
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


@accepts_arrays
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: Layout,
    pos: int,
    *,
    scale: float | None = None,
    text_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step: the query at sequence position `pos` attends exactly the keys
    `layout.keys_for_query(pos)` of the cache (the others are never read), with text keys at
    offset >= text_lens[b] inside the layout's text segment masked. Equal to row `pos` of
    `sparse_attention` on the full sequence; a query with no allowed key gets 0.

    q: [batch, heads, head_dim]; k_cache, v_cache: [batch, heads, S, head_dim] in sequence
    order, S > pos and S > every allowed key (last dim contiguous, other strides free);
    float32 / float16 / bfloat16. Returns [batch, heads, head_dim] in q's dtype. Inference only.
    For a whole generation, `DecodePlan` checks all of this once instead of at every step.
    """
    pos = _validate.decode(q, k_cache, v_cache, layout, pos)
    B, _, D = q.shape
    scale = _scale(scale, D)
    text_start, text_len = layout.text_segment
    lens = _validate.text_lens(text_lens, B, text_len, q.device)
    _validate.decode_keys(layout.keys_for_query(pos), k_cache.shape[2], pos)
    keys = layout.keys_for_query(pos, q.device)
    return _decode(q, k_cache, v_cache, keys, lens, text_start, text_len, scale)


class DecodePlan:
    """`decode_attention` for one generation: a layout, a KV cache pair and the text padding,
    checked once (every position's key list must fit the cache). Call `plan(q, pos)` at each
    step; `pos` is an int, or an int64 tensor of one element on q's device that the kernel
    reads (a position outside the layout then attends nothing and gives 0), which keeps the
    step's arguments fixed for CUDA graphs and `torch.compile`.

    The eager call goes straight to the kernel (no per-step checks or op dispatch, which cost
    ~10x the kernel at decode sizes); under torch.compile it is the `vilg::decode_attention`
    op. The cache tensors must stay where they are (write into them in place).
    """

    def __init__(self, layout: Layout, k_cache, v_cache, *, text_lens=None, scale=None):
        B, H, S, D = k_cache.shape if k_cache.dim() == 4 else (0, 0, 0, 0)
        q = k_cache.new_empty(B, H, D)
        _validate.decode(q, k_cache, v_cache, layout, 0)
        keys = layout.query_keys()[1]
        if keys.numel() and int(keys.max()) >= S:
            raise ValueError(
                f"the layout lets a query attend position {int(keys.max())}, beyond the cache "
                f"of length {S}"
            )
        self.layout, self.k_cache, self.v_cache = layout, k_cache, v_cache
        self.shape, self.dtype, self.device = (B, H, D), k_cache.dtype, k_cache.device
        self.scale = _scale(scale, D)
        self.text_start, self.text_len = layout.text_segment
        self.text_lens = _validate.text_lens(text_lens, B, self.text_len, self.device)
        self.key_ptr, self.keys = layout.query_keys(self.device)
        self.max_keys = layout.max_keys_per_query
        self._refs = None  # kernel views of what stays put, made on the first eager call

    def _check_q(self, q: torch.Tensor) -> None:
        if tuple(q.shape) != self.shape or q.dtype != self.dtype or q.device != self.device:
            raise ValueError(
                f"q must be {list(self.shape)} {self.dtype} on {self.device} like the plan's "
                f"cache, got {list(q.shape)} {q.dtype} on {q.device}"
            )
        if q.shape[-1] > 1 and q.stride(-1) != 1:
            raise ValueError("q must have a contiguous last dimension")

    def __call__(self, q: torch.Tensor, pos) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _decode(q, self.k_cache, self.v_cache, self.keys, self.text_lens,
                           self.text_start, self.text_len, self.scale, self.key_ptr,
                           self._pos_tensor(pos), self.max_keys)  # fmt: skip
        self._check_q(q)
        if self._refs is None:
            self._prepare()
        if isinstance(pos, torch.Tensor):
            pos = self._pos_tensor(pos)
            if pos.is_cpu and not 0 <= int(pos) < self.layout.seq_len:
                raise ValueError(f"pos {int(pos)} outside the layout of {self.layout.seq_len}")
            pos_ref = ref(pos)
        else:
            if not 0 <= pos < self.layout.seq_len:
                raise ValueError(f"pos {pos} outside the layout of {self.layout.seq_len}")
            if self._pos_host is not None:
                self._pos_host[0] = pos  # the CPU buffer through a NumPy view: no torch op
            else:
                self._pos_buf.fill_(pos)  # a kernel taking the value as its argument: no sync
            pos_ref = self._refs["pos"]
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        r = self._refs
        with profiled("vilg::decode_attention"):
            C().decode_attention(
                ref(q), r["k"], r["v"], r["keys"], ref(out), r["ws"], self._splits, r["lens"],
                self.text_start, self.text_len, self.scale, stream_of(q), r["key_ptr"], pos_ref,
            )  # fmt: skip
        return out

    def _prepare(self) -> None:
        B, H, D = self.shape
        self._splits, self._ws = 1, None  # the workspace lives as long as the plan
        if self.device.type == "cuda":
            self._splits = C().decode_splits(B, H, self.max_keys, self.device.index)
            n = C().decode_workspace_floats(B, H, D, self._splits)
            self._ws = torch.empty(n, dtype=torch.float32, device=self.device) if n else None
        self._pos_buf = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._pos_host = self._pos_buf.numpy() if self.device.type == "cpu" else None
        self._refs = {
            "k": ref(self.k_cache), "v": ref(self.v_cache), "keys": ref(self.keys),
            "lens": ref(self.text_lens), "key_ptr": ref(self.key_ptr), "ws": ref(self._ws),
            "pos": ref(self._pos_buf),
        }  # fmt: skip

    def _pos_tensor(self, pos) -> torch.Tensor:
        if not isinstance(pos, torch.Tensor):
            return torch.tensor([pos], dtype=torch.int64, device=self.device)
        if pos.dtype != torch.int64 or pos.numel() != 1 or pos.device != self.device:
            raise ValueError(
                f"a tensor pos must be one int64 element on {self.device}, got "
                f"{pos.dtype} {list(pos.shape)} on {pos.device}"
            )
        return pos.reshape(1)
