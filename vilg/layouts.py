"""Attention layouts: which key each query may attend, in dense and block-sparse form.

`ernie_vilg` builds the exact patterns of ERNIE-ViLG (row / column / conv over an image grid
plus a text prefix, see shared/specs/attention-patterns.md), plus "vqa": image->text with the
question in the bidirectional source, [question | image | answer]. Any other pattern comes from a
dense boolean mask or a FlexAttention-style ``mask_mod(q_idx, kv_idx)``.

The kernels see a layout in *kernel order*: an optional permutation of the sequence (column
attention runs on the transposed grid, where it is row attention) cut into square tiles. Each
query tile lists its key tiles, each either full or partial with a bitset mask; identical
partial masks are stored once.

A layout may be *rectangular* (`Layout.last_queries`): its queries are the last q_len positions
of its seq_len-long sequence, against all seq_len keys (a chunk of new queries against a KV
cache, bottom-right aligned as in flash-attn). Query tiles then start at the first query.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

KINDS = ("full", "row", "column", "conv")
DIRECTIONS = ("text2image", "image2text", "vqa")

MaskMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# key_hint(q) -> sequence positions (1-D int64, repeats allowed) holding every key that any of
# the query positions q (1-D int64) may attend: a superset that the build evaluates instead
# of all L keys (a pattern's speed-up; the result never depends on it beyond that)
KeyHint = Callable[[torch.Tensor], torch.Tensor]
_ONE_THREAD_BUILD = threading.Lock()


def schedule(num_layers: int) -> list[str]:
    """Per-layer pattern of an N-layer ERNIE-ViLG stack: conv last, column when i % 4 == 2."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    kinds = ["column" if i % 4 == 2 else "row" for i in range(num_layers)]
    kinds[-1] = "conv"
    return kinds


@dataclass(frozen=True)
class PatternSpec:
    """The parameters of an ERNIE-ViLG layout (None for layouts built from a mask)."""

    kind: str
    text_len: int
    grid: tuple[int, int]
    direction: str
    window: int
    answer_len: int = 0  # vqa only: length of the answer segment after the image


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


def _as_mask_mod(fn: Callable) -> MaskMod:
    """Accept mask_mod(q, kv) and FlexAttention's mask_mod(b, h, q, kv)."""
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = 2
    if n == 4:
        return lambda q, k: fn(torch.zeros_like(q), torch.zeros_like(q), q, k)
    if n != 2:
        raise ValueError("mask_mod must take (q_idx, kv_idx) or (b, h, q_idx, kv_idx)")
    return fn


class Layout:
    """A sparsity pattern over a sequence of `seq_len` tokens, ready for the kernels.

    Build with `ernie_vilg(...)`, `Layout.from_dense(mask)` or `Layout.from_mask_mod(fn, L)`.
    `q_len` (default seq_len): the queries are the last q_len positions of the sequence (see
    `last_queries`); keys are always all seq_len positions.
    """

    def __init__(
        self,
        seq_len: int,
        mask_mod: Callable,
        *,
        q_len: int | None = None,
        block_size: int = 64,
        perm: torch.Tensor | None = None,
        text_segment: tuple[int, int] | None = None,
        spec: PatternSpec | None = None,
        name: str | None = None,
        key_hint: KeyHint | None = None,
    ):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if block_size not in (16, 32, 64, 128):
            raise ValueError(f"block_size must be 16, 32, 64 or 128, got {block_size!r}")
        if q_len is None:
            q_len = seq_len
        if isinstance(q_len, bool) or not isinstance(q_len, int) or not 1 <= q_len <= seq_len:
            raise ValueError(f"q_len must be an int in 1..{seq_len}, got {q_len!r}")
        if q_len != seq_len and perm is not None:
            raise ValueError("a layout with fewer queries than keys cannot permute the sequence")
        self.seq_len = seq_len
        self.q_len = q_len
        self.block_size = block_size
        self.spec = spec
        self.name = name  # shown in repr, e.g. "sliding_window(L=4096, window=512)"
        self.mask_mod = _as_mask_mod(mask_mod)
        self.key_hint = key_hint
        if perm is not None:
            perm = torch.as_tensor(perm, dtype=torch.int64).flatten()
            if perm.numel() != seq_len or not torch.equal(
                perm.sort().values, torch.arange(seq_len)
            ):
                raise ValueError("perm must be a permutation of range(seq_len)")
        self._perm = perm
        # Text segment (sequence positions) whose padded keys text_lens masks per sample.
        if text_segment is not None:
            start, length = text_segment
            if start < 0 or length < 0 or start + length > seq_len:
                raise ValueError(f"text_segment {text_segment} outside the sequence")
        self.text_segment = text_segment or (0, 0)
        # The build is many small tensor ops, where a thread team costs more than it saves:
        # on a busy 2-core machine two threads made it ~25x slower than one.
        # The setting is process-wide: one build at a time, or a build started inside another
        # would save its "1" and restore that last.
        with _ONE_THREAD_BUILD:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._build()
            finally:
                torch.set_num_threads(threads)
        self._cpu_arrays = tuple(self._arrays[n] for n in self._KERNEL_NAMES)
        self._device_cache: dict[torch.device, tuple] = {}
        self._keys_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._chunks: dict[int, Layout] = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_mask_mod(cls, mask_mod: Callable, seq_len: int, **kw) -> Layout:
        return cls(seq_len, mask_mod, **kw)

    @classmethod
    def from_block_mask(cls, block_mask, **kw) -> Layout:
        """The layout of a FlexAttention `BlockMask` (torch.nn.attention.flex_attention):
        blocks it lists as full are allowed, partial ones apply its mask_mod, absent ones are
        masked. vilg layouts are shared by every sample and head, so the mask must not depend
        on b or h (its mask_mod is evaluated at b = h = 0)."""
        Lq, Lk = (int(n) for n in block_mask.seq_lengths)
        if Lq != Lk:
            raise ValueError(f"vilg layouts need equal query and key lengths, got {Lq}, {Lk}")
        qb, kb = (int(n) for n in block_mask.BLOCK_SIZE)
        nq, nk = (Lq + qb - 1) // qb, (Lk + kb - 1) // kb

        def blocks(num, idx):  # [..., nq] counts + [..., nq, max] indices -> [nq, nk] bool
            if num is None:
                return torch.zeros(nq, nk, dtype=torch.bool)
            num, idx = num.detach().cpu(), idx.detach().cpu().long()
            num, idx = num.reshape(-1, num.shape[-1]), idx.reshape(-1, *idx.shape[-2:])
            dense = torch.zeros(num.shape[0], nq, nk + 1, dtype=torch.bool)
            used = torch.arange(idx.shape[-1]) < num[..., None]
            dense.scatter_(2, torch.where(used, idx, nk)[:, :nq], True)
            dense = dense[:, :, :nk]
            if not (dense == dense[:1]).all():
                raise ValueError("the BlockMask differs across batch / heads; vilg layouts cannot")
            return dense[0]

        partial = blocks(block_mask.kv_num_blocks, block_mask.kv_indices)
        full = blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
        fn = block_mask.mask_mod

        def mask_mod(q, k):
            q, k = torch.as_tensor(q), torch.as_tensor(k)
            bq, bk = q // qb, k // kb
            zero = torch.zeros_like(q)
            inner = torch.as_tensor(fn(zero, zero, q, k), dtype=torch.bool)
            return full[bq, bk] | (partial[bq, bk] & inner)

        kw.setdefault("name", f"from_block_mask(L={Lq}, blocks={qb}x{kb})")
        return cls(Lq, mask_mod, **kw)

    def to_block_mask(self, device="cpu", BLOCK_SIZE: int = 128):
        """This layout as a FlexAttention `BlockMask` (for flex_attention), in sequence order.
        Needs torch >= 2.5 (the first with FlexAttention)."""
        try:
            from torch.nn.attention.flex_attention import create_block_mask
        except ImportError as e:
            raise ImportError(
                f"Layout.to_block_mask needs FlexAttention, in torch >= 2.5; this is torch "
                f"{torch.__version__} (vilg's own kernels need no FlexAttention)"
            ) from e

        dense = self.dense_mask(device)
        return create_block_mask(
            lambda b, h, q, k: dense[q, k],
            None,
            None,
            self.q_len,
            self.seq_len,
            device=device,
            BLOCK_SIZE=BLOCK_SIZE,
        )

    @classmethod
    def from_dense(cls, mask: torch.Tensor, **kw) -> Layout:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError("mask must be a square bool tensor [L, L] (True = may attend)")
        m = mask.detach().cpu()
        return cls(int(m.shape[0]), lambda q, k: m[q, k], **kw)

    def _build(self) -> None:
        L, Lq, bs = self.seq_len, self.q_len, self.block_size
        nb, nbq = (L + bs - 1) // bs, (Lq + bs - 1) // bs
        words = (bs + 63) // 64
        order = self._perm if self._perm is not None else torch.arange(L)
        padded = torch.cat([order, torch.full((nb * bs - L,), -1, dtype=torch.int64)])
        valid = padded >= 0
        keys = padded.clamp(min=0)
        # query positions in kernel order: the last Lq of the sequence
        qpad = padded if Lq == L else torch.arange(L - Lq, L)
        qpad = torch.cat([qpad[:Lq], torch.full((nbq * bs - Lq,), -1, dtype=torch.int64)])
        # sequence position -> kernel tile, for the key hint
        tile_of = None if self._perm is None else torch.argsort(self._perm) // bs
        lanes = torch.arange(bs)
        all_tiles = torch.arange(nb)
        rows_kv, rows_mask, tiles = [], [], []
        ptr = [0]
        weights = torch.ones(64, dtype=torch.int64) << torch.arange(64)
        for qb in range(nbq):
            q = qpad[qb * bs : (qb + 1) * bs]
            cand = all_tiles  # key tiles to evaluate: all, or those the hint names
            if self.key_hint is not None and bool((q >= 0).any()):
                pos = torch.as_tensor(self.key_hint(q[q >= 0]), dtype=torch.int64).flatten()
                pos = pos[(pos >= 0) & (pos < L)]
                cand = torch.unique(pos // bs if tile_of is None else tile_of[pos])
            cols = (cand[:, None] * bs + lanes).flatten()
            k, kvalid = keys[cols], valid[cols]
            m = self.mask_mod(q.clamp(min=0)[:, None], k[None, :])
            m = torch.as_tensor(m, dtype=torch.bool).expand(bs, cols.numel())
            m = m & (q >= 0)[:, None] & kvalid[None, :]
            if Lq != L and bool((m & (k[None, :] > q[:, None])).any()):
                i, j = (int(x[0]) for x in torch.nonzero(m & (k[None, :] > q[:, None])).T)
                raise ValueError(
                    f"{self.name or 'this layout'} lets query {int(q[i])} attend the later key "
                    f"{int(k[j])}: a chunk of the last {Lq} queries against {L} keys (a KV "
                    "cache) is defined only for causal patterns (every allowed key at or before "
                    "its query)"
                )
            m = m.reshape(bs, cand.numel(), bs).transpose(0, 1)  # [key tile, row, col]
            count = m.sum(dim=(1, 2))
            nz = torch.nonzero(count).flatten()
            rows_kv.append(cand[nz])
            # a full tile must be all allowed *and* wholly inside the sequence
            full = count[nz] == bs * bs
            rows_mask.append(full)
            tiles.append(m[nz][~full])
            ptr.append(ptr[-1] + nz.numel())
        kv = torch.cat(rows_kv).to(torch.int32)
        is_full = torch.cat(rows_mask)
        partial = torch.cat(tiles) if tiles else torch.zeros(0, bs, bs, dtype=torch.bool)
        # pack [n, bs, bs] bool -> [n, bs, words] int64 bitsets, then deduplicate
        pad_cols = words * 64 - bs
        if pad_cols:
            partial = torch.nn.functional.pad(partial, (0, pad_cols))
        bits = (partial.reshape(-1, bs, words, 64).long() * weights).sum(-1)
        if bits.shape[0]:
            uniq, inverse = torch.unique(bits, dim=0, return_inverse=True)
        else:
            uniq, inverse = bits, torch.zeros(0, dtype=torch.int64)
        mask_id = torch.full((kv.numel(),), -1, dtype=torch.int32)
        mask_id[~is_full] = inverse.to(torch.int32)
        q_ptr = torch.tensor(ptr, dtype=torch.int32)
        q_of = torch.repeat_interleave(torch.arange(nbq, dtype=torch.int32), q_ptr.diff())
        # CSC: the same entries sorted by key tile (stable, so query tiles stay ascending)
        order_k = torch.sort(kv.long() * nbq + q_of.long()).indices
        k_counts = torch.bincount(kv.long(), minlength=nb)
        k_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), k_counts.cumsum(0)]).to(torch.int32)
        self.num_blocks = nb  # key tiles (= query tiles unless rectangular)
        self.num_q_blocks = nbq
        self._arrays = dict(
            q_ptr=q_ptr,
            q_kv=kv,
            q_mask=mask_id,
            k_ptr=k_ptr,
            k_q=q_of[order_k].contiguous(),
            k_mask=mask_id[order_k].contiguous(),
            masks=uniq.contiguous()
            if uniq.numel()
            else torch.zeros(1, bs, words, dtype=torch.int64),
            perm=None if self._perm is None else self._perm.to(torch.int32),
        )
        self.num_allowed = sum(int(t.sum()) for t in tiles) + int(is_full.sum()) * bs * bs
        self.num_full = int(is_full.sum())
        self.num_partial = int((~is_full).sum())
        # text segment in kernel order (the permutation must keep it contiguous)
        start, length = self.text_segment
        if length:
            if self._perm is not None:
                where = torch.argsort(self._perm)[start : start + length]
                if not torch.equal(where, torch.arange(int(where[0]), int(where[0]) + length)):
                    raise ValueError("perm must keep the text segment contiguous and in order")
                start = int(where[0])
        self._kernel_text = (start, length)

    # ---- queries ------------------------------------------------------------------------
    @property
    def num_tiles(self) -> int:
        """Allowed (query tile, key tile) pairs the kernels visit."""
        return self.num_full + self.num_partial

    @property
    def density(self) -> float:
        """Fraction of all tile pairs visited."""
        return self.num_tiles / (self.num_q_blocks * self.num_blocks)

    @property
    def is_rectangular(self) -> bool:
        """Fewer queries than keys (see `last_queries`)."""
        return self.q_len != self.seq_len

    def sequence_order(self) -> Layout:
        """This layout without its permutation (tiles cut in sequence order): the same mask,
        usually with less-filled tiles. `sparse_attention(key_lens=...)` runs a permuted layout
        through it, since per-sample key lengths cut the sequence, not the kernel order. Built
        once and cached; self when there is no permutation."""
        if self._perm is None:
            return self
        hit = self._chunks.get(0)  # key 0: no chunk has zero queries
        if hit is None:
            seg = self.text_segment
            hit = Layout(
                self.seq_len,
                self.mask_mod,
                block_size=self.block_size,
                text_segment=seg if seg[1] else None,
                spec=self.spec,
                name=f"{self._label()}, sequence order",
                key_hint=self.key_hint,
            )
            self._chunks[0] = hit
        return hit

    def last_queries(self, q_len: int) -> Layout:
        """This layout's rows for its last `q_len` positions only, against all seq_len keys: a
        chunk of q_len new queries attending a KV cache of seq_len keys (chunked prefill; query
        i of the chunk is sequence position seq_len - q_len + i, bottom-right aligned as in
        flash-attn). Defined only for causal patterns (ValueError otherwise: a bidirectional
        query would need keys that are not in the cache yet). Built once per q_len and cached;
        `sparse_attention` calls it when q is shorter than k (eagerly; under torch.compile pass
        the result as the layout). Sequence order: a permutation is dropped."""
        if isinstance(q_len, bool) or not isinstance(q_len, int) or not 1 <= q_len <= self.seq_len:
            raise ValueError(f"q_len must be an int in 1..{self.seq_len}, got {q_len!r}")
        if q_len == self.q_len:
            return self
        if self.is_rectangular:
            raise ValueError(
                f"this layout already has {self.q_len} queries; call last_queries on the square "
                "layout"
            )
        hit = self._chunks.get(q_len)
        if hit is None:
            seg = self.text_segment
            hit = Layout(
                self.seq_len,
                self.mask_mod,
                q_len=q_len,
                block_size=self.block_size,
                text_segment=seg if seg[1] else None,
                name=f"{self._label()}, last {q_len} queries",
                key_hint=self.key_hint,
            )
            self._chunks[q_len] = hit
        return hit

    @property
    def fill(self) -> float:
        """Fraction of the visited tiles' entries that are allowed (1.0: no wasted work)."""
        return self.num_allowed / max(1, self.num_tiles * self.block_size**2)

    # ---- combination ----------------------------------------------------------------------
    def _combine(self, other, op, sym: str) -> Layout:
        if not isinstance(other, Layout):
            return NotImplemented
        if other.seq_len != self.seq_len:
            raise ValueError(
                f"cannot combine layouts of lengths {self.seq_len} and {other.seq_len}"
            )
        if self.is_rectangular or other.is_rectangular:
            raise ValueError("combine square layouts, then call last_queries on the result")
        a, b = self.mask_mod, other.mask_mod
        same_perm = (self._perm is None and other._perm is None) or (
            self._perm is not None
            and other._perm is not None
            and torch.equal(self._perm, other._perm)
        )
        # the text segment (padded by text_lens) survives when the two agree or one has none
        segs = {self.text_segment, other.text_segment} - {(0, 0)}
        ha, hb = self.key_hint, other.key_hint
        if sym == "|":  # a union's keys: both hints' (a missing hint: any key)
            hint = None if ha is None or hb is None else (lambda q: torch.cat([ha(q), hb(q)]))
        else:  # an intersection's keys lie in either one's
            hint = ha or hb
        return Layout(
            self.seq_len,
            lambda q, k: op(torch.as_tensor(a(q, k)), torch.as_tensor(b(q, k))),
            block_size=min(self.block_size, other.block_size),
            perm=self._perm if same_perm else None,
            text_segment=segs.pop() if len(segs) == 1 else None,
            name=f"({self._label()} {sym} {other._label()})",
            key_hint=hint,
        )

    def __or__(self, other) -> Layout:
        """Union: a query may attend a key allowed by either layout."""
        return self._combine(other, torch.logical_or, "|")

    def __and__(self, other) -> Layout:
        """Intersection: a query may attend a key allowed by both layouts."""
        return self._combine(other, torch.logical_and, "&")

    def dense_mask(self, device=None) -> torch.Tensor:
        """[q_len, L] bool (q_len = L unless rectangular), True where query (row) may attend
        key (column); sequence order (row i is position L - q_len + i)."""
        idx = torch.arange(self.seq_len)
        qi = idx[self.seq_len - self.q_len :]
        m = torch.as_tensor(self.mask_mod(qi[:, None], idx[None, :]), dtype=torch.bool)
        return m.expand(self.q_len, self.seq_len).to(device)

    def keys_for_query(self, pos: int, device=None) -> torch.Tensor:
        """Sequence positions (int32, ascending) that query `pos` may attend."""
        if not 0 <= pos < self.seq_len:
            raise ValueError(f"position {pos} outside the sequence of length {self.seq_len}")
        ptr = self.query_keys()[0]  # offsets read on the host, the slice on `device`
        return self.query_keys(device)[1][int(ptr[pos]) : int(ptr[pos + 1])]

    def query_keys(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every query's allowed keys at once, as CSR (int32): query i attends the sequence
        positions keys[ptr[i]:ptr[i + 1]], ascending. Built once (per device) for decoding."""
        dev = torch.device(device or "cpu")
        hit = self._keys_cache.get(dev)
        if hit is None:
            if dev.type != "cpu":
                hit = tuple(t.to(dev) for t in self.query_keys())
            else:
                L, rows, counts = self.seq_len, [], []
                idx = torch.arange(L)
                step = max(1, (1 << 22) // L)  # bound the [rows, L] mask at ~4M entries
                for q0 in range(0, L, step):
                    q = idx[q0 : q0 + step, None]
                    m = torch.as_tensor(self.mask_mod(q, idx[None, :]), dtype=torch.bool)
                    m = m.expand(q.shape[0], L)
                    counts.append(m.sum(1))
                    rows.append(torch.nonzero(m)[:, 1])
                ptr = torch.zeros(L + 1, dtype=torch.int64)
                ptr[1:] = torch.cat(counts).cumsum(0)
                hit = (ptr.to(torch.int32), torch.cat(rows).to(torch.int32))
            self._keys_cache[dev] = hit
        return hit

    @property
    def max_keys_per_query(self) -> int:
        return int(self.query_keys()[0].diff().max())

    _KERNEL_NAMES = ("q_ptr", "q_kv", "q_mask", "k_ptr", "k_q", "k_mask", "masks", "perm")

    def kernel_arrays(self, device) -> tuple:
        """The 8 arrays the kernels read, built once per device.

        The CPU tuple exists from construction, so a torch.compile'd call reads a fixed
        attribute (no guard on a cache that the first call fills, hence no recompile); for a
        GPU call `Layout.to(device)` once before compiling does the same."""
        device = torch.device(device)
        if device.type == "cpu":
            return self._cpu_arrays
        hit = self._device_cache.get(device)
        if hit is None:
            hit = tuple(None if t is None else t.to(device) for t in self._cpu_arrays)
            self._device_cache[device] = hit
        return hit

    def to(self, device) -> Layout:
        """Copy the kernel arrays to `device` now (they are cached there); returns self."""
        self.kernel_arrays(device)
        return self

    @property
    def kernel_text_segment(self) -> tuple[int, int]:
        return self._kernel_text

    @property
    def kernel_perm(self) -> torch.Tensor | None:
        """The kernel-order permutation of the sequence (None: sequence order)."""
        return self._perm

    def draw(self, path, scale: int | None = None) -> None:
        """Save the dense mask as a PNG (allowed = white), with the tile grid in grey."""
        from PIL import Image

        m = self.dense_mask().to(torch.uint8) * 255
        img = m.clone()
        rows = torch.arange(0, self.q_len, self.block_size)
        cols = torch.arange(0, self.seq_len, self.block_size)
        if self._perm is None:
            img[rows, :] = torch.where(m[rows, :] > 0, 200, 60).to(torch.uint8)
            img[:, cols] = torch.where(m[:, cols] > 0, 200, 60).to(torch.uint8)
        scale = scale or max(1, 512 // self.seq_len)
        pic = Image.fromarray(img.numpy(), mode="L")
        if scale > 1:
            pic = pic.resize((self.seq_len * scale, self.q_len * scale), Image.NEAREST)
        pic.save(path)

    def _label(self) -> str:
        if self.spec:
            return (
                f"{self.spec.kind}, {self.spec.direction}, text={self.spec.text_len}, "
                f"grid={self.spec.grid}"
                + (f", answer={self.spec.answer_len}" if self.spec.direction == "vqa" else "")
            )
        return self.name or "custom"

    def __repr__(self) -> str:
        q = f", q_len={self.q_len}" if self.is_rectangular else ""
        return (
            f"Layout({self._label()}, L={self.seq_len}{q}, block={self.block_size}, "
            f"tiles={self.num_tiles}/{self.num_q_blocks * self.num_blocks} "
            f"({self.num_partial} partial), fill={self.fill:.2f})"
        )


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
    from vilg.patterns import grid_shape  # imports this module: late

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


# The pattern library (causal, sliding_window, neighborhood_2d, axial, document,
# block_diagonal) lives in vilg.patterns; imported last, since it builds on Layout.
from vilg.patterns import (  # noqa: E402, F401 (re-exported)
    axial,
    block_diagonal,
    causal,
    document,
    neighborhood_2d,
    sliding_window,
)
