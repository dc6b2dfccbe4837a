"""`Layout`: which key each query may attend, in dense and block-sparse form.

A layout is built from a FlexAttention-style ``mask_mod(q_idx, kv_idx)`` or a dense boolean
mask; the builders of `vilg.layouts` (the ERNIE-ViLG patterns) and `vilg.patterns` (causal,
sliding window, neighbourhood, ...) return one.

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
from collections.abc import Callable
from dataclasses import dataclass

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# key_hint(q) -> sequence positions (1-D int64, repeats allowed) holding every key that any of
# the query positions q (1-D int64) may attend: a superset that the build evaluates instead
# of all L keys (a pattern's speed-up; the result never depends on it beyond that)
KeyHint = Callable[[torch.Tensor], torch.Tensor]
# The build is many small tensor ops, where waking a thread team costs more than the op (and a
# busy core stalls the whole team). Evaluating the mask in pieces under torch's intra-op grain
# size (32768 elements) keeps every op on the calling thread without touching the process-wide
# thread count.
_PIECE = 32767


@dataclass(frozen=True)
class PatternSpec:
    """The parameters of an ERNIE-ViLG layout (None for layouts built from a mask)."""

    kind: str
    text_len: int
    grid: tuple[int, int]
    direction: str
    window: int
    answer_len: int = 0  # vqa only: length of the answer segment after the image


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
    `last_queries`); keys are always all seq_len positions. A rectangular layout must be causal
    (no query attends a later key) unless built with `future_keys=True` (cross-attention).
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
        future_keys: bool = False,
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
        # a rectangular layout whose queries may see keys after their own position: not a KV
        # cache chunk but cross-attention (flash-attn's non-causal seqlen_q < seqlen_k)
        self.future_keys = bool(future_keys)
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
        self._build()
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
        all_tiles = torch.arange(nb)
        rows_kv, rows_mask, tiles = [], [], []
        ptr = [0]
        weights = torch.ones(64, dtype=torch.int64) << torch.arange(64)
        per_piece = max(1, _PIECE // (bs * bs))  # key tiles per mask evaluation
        for qb in range(nbq):
            q = qpad[qb * bs : (qb + 1) * bs]
            cand_all = all_tiles  # key tiles to evaluate: all, or those the hint names
            if self.key_hint is not None and bool((q >= 0).any()):
                pos = torch.as_tensor(self.key_hint(q[q >= 0]), dtype=torch.int64).flatten()
                pos = pos[(pos >= 0) & (pos < L)]
                cand_all = torch.unique(pos // bs if tile_of is None else tile_of[pos])
            found = []
            for c0 in range(0, cand_all.numel(), per_piece):
                found.append(self._tile_piece(q, cand_all[c0 : c0 + per_piece], keys, valid))
            nz_tiles = [f[0] for f in found]
            rows_kv.append(torch.cat(nz_tiles) if nz_tiles else all_tiles[:0])
            full = torch.cat([f[1] for f in found]) if found else torch.zeros(0, dtype=torch.bool)
            rows_mask.append(full)
            tiles.extend(f[2] for f in found)
            ptr.append(ptr[-1] + int(full.numel()))
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

    def _tile_piece(self, q, cand, keys, valid):
        """Query tile `q` (kernel-order positions, -1 = padding) against key tiles `cand`: the
        tiles with an allowed entry, which of them are full, and the partial ones' masks."""
        L, Lq, bs = self.seq_len, self.q_len, self.block_size
        cols = (cand[:, None] * bs + torch.arange(bs)).flatten()
        k, kvalid = keys[cols], valid[cols]
        m = self.mask_mod(q.clamp(min=0)[:, None], k[None, :])
        m = torch.as_tensor(m, dtype=torch.bool).expand(bs, cols.numel())
        m = m & (q >= 0)[:, None] & kvalid[None, :]
        if Lq != L and not self.future_keys and bool((m & (k[None, :] > q[:, None])).any()):
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
        full = count[nz] == bs * bs  # all allowed *and* wholly inside the sequence
        return cand[nz], full, m[nz][~full]

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

    def for_call(self, q_len: int, *, sequence_order: bool = False) -> Layout:
        """The layout that runs a call with `q_len` queries against this layout's keys: itself,
        its `last_queries(q_len)` chunk when q_len is shorter (a square causal layout), and its
        `sequence_order()` twin when per-sample key padding cuts the sequence order
        (`sequence_order=True`). The twins are built once and cached; under torch.compile only
        twins built before compiling are used (ValueError naming the call to make first).
        A q_len this layout cannot take is returned unchanged for validation to reject."""
        layout = self
        q_len = int(q_len)
        if q_len != self.q_len and not self.is_rectangular and 0 < q_len < self.seq_len:
            if torch.compiler.is_compiling():  # no build is traced
                layout = self._chunks.get(q_len)
                if layout is None:
                    raise ValueError(
                        f"q has {q_len} positions, k {self.seq_len}: under torch.compile pass "
                        f"layout.last_queries({q_len}) (built once, before compiling) as the layout"
                    )
            else:
                layout = self.last_queries(q_len)
        if sequence_order and layout._perm is not None:
            if torch.compiler.is_compiling():
                twin = layout._chunks.get(0)
                if twin is None:
                    raise ValueError(
                        "per-sample key padding with a permuted layout runs its sequence-order "
                        "twin: under torch.compile call layout.sequence_order() once before "
                        "compiling"
                    )
                return twin
            return layout.sequence_order()
        return layout

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
