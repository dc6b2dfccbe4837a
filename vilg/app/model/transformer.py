"""The unified ERNIE-ViLG transformer: one decoder stack for text->image and image->text.

Both directions share every block; only the attention mask differs (attention-patterns.md):
  text2image: [text | image], text bidirectional, image causal under the layer's sparse pattern
  image2text: [image | text], image bidirectional under the pattern, text causal
  vqa:        [question | image | answer], question and image one bidirectional source (so the
              image positions can read the question), answer causal; answer positions continue
              the question's text positions
Layer i uses `vilg.layouts.schedule(n_layer)[i]` (row / column / conv) through
`vilg.ops.sparse_attention`; `GPTConfig.attn_impl` swaps that for dense attention under the
same masks ("sdpa", "eager"), so one set of weights can be compared across backends
(bench/model_step.py). Text and image have their own embeddings and output heads;
image tokens get 2-D (row + column) positions.

Inputs are shifted so that the output at a *target* position predicts that position's token:
  text2image: image input = [BOI, t_0 .. t_{n-2}] at image positions, output j -> t_j
  image2text: text input  = [BOS, w_0 .. w_{m-1}] at text positions,  output i -> w_i / EOS
so a padded text segment never sits between a prediction and its target.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vilg import layouts, ops

T2I, I2T, VQA = "text2image", "image2text", "vqa"
DIRS = (T2I, I2T, VQA)
# vilg: the block-sparse kernels; sdpa: torch SDPA with the layout's dense boolean mask;
# eager: softmax(q k^T * scale + mask) v with the scores materialised (the paper's baseline)
ATTN_IMPLS = ("vilg", "sdpa", "eager")


@dataclass
class GPTConfig:
    text_vocab: int = 256
    image_vocab: int = 128  # codebook size; id image_vocab is the BOI start token
    text_len: int = 48  # longest text segment (incl. BOS) the model accepts
    grid: tuple = (3, 3)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    window: int = 11
    code_dim: int = 0  # > 0 adds the end-to-end head: hidden -> z_emb of this size
    attn_impl: str = "vilg"  # one of ATTN_IMPLS; read at every forward, so it can be switched

    def __post_init__(self):
        self.grid = tuple(self.grid)
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head")

    @property
    def n_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        return asdict(self)


# A layout's [L, L] dense mask per device, for the dense backends: built once, dropped with
# the layout (the model keeps its layouts, so in practice once per model and device).
_DENSE_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dense_mask(layout, text_lens, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask vilg applies, dense: ([L, L] or, with text_lens, [B, 1, L, L] bool, rows that
    allow no key). Text keys at offset >= text_lens[b] in the layout's text segment are masked.
    Rows without any allowed key are opened to every key in the returned mask (a softmax over
    nothing is NaN, and NaN would reach the gradients) and must be zeroed afterwards: vilg's
    output for such a query is 0."""
    mask = _layout_mask(layout, device)
    if text_lens is not None:
        mask = mask & ~_padded_keys(layout, text_lens, layout.seq_len, device)
    return _open_empty_rows(mask)


def _layout_mask(layout, device) -> torch.Tensor:
    """layout.dense_mask() on `device`, built once per layout and device."""
    per_device = _DENSE_MASKS.setdefault(layout, {})
    device = torch.device(device)
    mask = per_device.get(device)
    if mask is None:
        mask = per_device[device] = layout.dense_mask(device).contiguous()
    return mask


def _padded_keys(layout, text_lens, n: int, device) -> torch.Tensor:
    """[B, 1, 1, n] bool: which of the first n keys text_lens pads (offset >= text_lens[b]
    inside the layout's text segment)."""
    start, tl = layout.text_segment
    off = torch.arange(n, device=device) - start
    lens = torch.as_tensor(text_lens, device=device)[:, None]
    return ((off >= lens) & (off >= 0) & (off < tl))[:, None, None, :]


def _open_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    empty = ~mask.any(-1, keepdim=True)
    return mask | empty, empty


def _dense_attention(impl: str, q, k, v, mask, empty):
    """softmax(q k^T / sqrt(d) under mask) v by SDPA or with the scores materialised; the
    `empty` rows (opened in mask) are zeroed, as vilg's kernels give 0 there."""
    if impl == "sdpa":
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        att = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    return y.masked_fill(empty, 0.0)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg  # shared with the model: attn_impl switches every layer at once
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def _heads(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return [t.view(B, L, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]

    def forward(self, x, layout, text_lens, cache=None):
        B, L, C = x.shape
        q, k, v = self._heads(x)
        if cache is not None:  # prefill: keep this layer's keys / values
            cache[0][:, :, :L] = k
            cache[1][:, :, :L] = v
        y = self.attend(q, k, v, layout, text_lens)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, L, C)))

    def attend(self, q, k, v, layout, text_lens):
        """q, k, v [B, heads, L, head_dim] -> [B, heads, L, head_dim] with cfg.attn_impl."""
        impl = self.cfg.attn_impl
        if impl == "vilg":
            return ops.sparse_attention(q, k, v, layout, text_lens=text_lens)
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        return _dense_attention(impl, q, k, v, *dense_mask(layout, text_lens, q.device))

    def step(self, x, layout, pos, cache, text_lens):
        """One decode step for the token at `pos` (an int, or an int64 [1] tensor); x [B, C]."""
        B, C = x.shape
        # functional calls and views: at decode sizes each module call or copy costs about
        # as much as the arithmetic it wraps
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(B, 3, self.n_head, -1)
        q, k, v = qkv.unbind(1)
        if isinstance(pos, torch.Tensor):  # no host sync: the step can be graph-captured
            cache[0].index_copy_(2, pos, k[:, :, None])
            cache[1].index_copy_(2, pos, v[:, :, None])
        else:
            cache[0][:, :, pos] = k
            cache[1][:, :, pos] = v
        if self.cfg.attn_impl != "vilg":
            y = self._dense_step(q, layout, pos, cache, text_lens)
        elif isinstance(cache, LayerCache):
            y = cache.plan(layout, text_lens)(q, pos)
        else:
            y = ops.decode_attention(q, cache[0], cache[1], layout, pos, text_lens=text_lens)
        return F.linear(y.reshape(B, C), self.proj.weight, self.proj.bias)

    def _dense_step(self, q, layout, pos, cache, text_lens):
        """A dense KV-cache step (what a decoder without sparse kernels does): the query
        against the cache up to `pos` (an int) or the whole layout (a tensor position, so the
        shapes stay fixed), under the layout's mask row and the text padding."""
        mask = _layout_mask(layout, q.device)
        if isinstance(pos, torch.Tensor):
            n, row = layout.seq_len, mask.index_select(0, pos)
        else:
            n, row = pos + 1, mask[pos : pos + 1, : pos + 1]
        if text_lens is not None:
            row = row & ~_padded_keys(layout, text_lens, n, q.device)
        k, v = cache[0][:, :, :n], cache[1][:, :, :n]
        impl = self.cfg.attn_impl
        return _dense_attention(impl, q[:, :, None], k, v, *_open_empty_rows(row))[:, :, 0]


class LayerCache(tuple):
    """One layer's (k, v) cache, [B, H, L, head_dim] each, with the decode plans made for it:
    the layout and padding checks and key lists of a generation are done once, not per step."""

    def __new__(cls, k: torch.Tensor, v: torch.Tensor):
        self = super().__new__(cls, (k, v))
        self.plans = {}
        return self

    def plan(self, layout, text_lens) -> ops.DecodePlan:
        hit = self.plans.get(layout)
        if hit is None or hit[0] is not text_lens:  # a new generation's padding: plan again
            hit = (text_lens, ops.DecodePlan(layout, self[0], self[1], text_lens=text_lens))
            self.plans[layout] = hit
        return hit[1]


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, layout, text_lens, cache=None):
        x = x + self.attn(self.ln1(x), layout, text_lens, cache)
        return x + self.mlp(self.ln2(x))

    def step(self, x, layout, pos, cache, text_lens):
        x = x + self.attn.step(_ln(self.ln1, x), layout, pos, cache, text_lens)
        fc, _, out, _ = self.mlp  # Linear, GELU, Linear, Dropout (identity at inference)
        h = F.gelu(F.linear(_ln(self.ln2, x), fc.weight, fc.bias))
        return x + F.linear(h, out.weight, out.bias)


def _ln(m: nn.LayerNorm, x):
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class UnifiedTransformer(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d, (H, W) = cfg.n_embd, cfg.grid
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.text_pos = nn.Embedding(cfg.text_len, d)
        self.image_emb = nn.Embedding(cfg.image_vocab + 1, d)  # + BOI
        self.row_pos = nn.Embedding(H, d)
        self.col_pos = nn.Embedding(W, d)
        self.dir_emb = nn.Embedding(len(DIRS), d)  # which stream: shared weights tell them apart
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(d, cfg.image_vocab, bias=False)
        self.z_head = (
            nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.code_dim))
            if cfg.code_dim > 0
            else None
        )
        self.kinds = layouts.schedule(cfg.n_layer)
        self.grad_checkpointing = False
        self._layouts: dict = {}
        self.apply(self._init)
        for n, p in self.named_parameters():  # GPT-2 style scaled init of residual outputs
            if n.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    @property
    def boi(self) -> int:
        return self.cfg.image_vocab

    def layouts_for(
        self, direction: str, text_len: int, answer_len: int = 0, length: int | None = None
    ) -> list:
        """Each layer's layout; `length` < the full sequence: the layouts of its prefix (text to
        image only, where no query of a prefix attends past it: the prefill of generation)."""
        key = (direction, text_len, answer_len, length)
        if key not in self._layouts:
            if length is not None:
                if direction != T2I:
                    raise ValueError("only text2image runs on a prefix of its sequence")
                self._layouts[key] = [
                    layouts.Layout(length, full.mask_mod, text_segment=full.text_segment)
                    for full in self.layouts_for(direction, text_len, answer_len)
                ]
            else:
                self._layouts[key] = [
                    layouts.ernie_vilg(
                        k,
                        text_len,
                        self.cfg.grid,
                        direction=direction,
                        window=self.cfg.window,
                        answer_len=answer_len,
                    )
                    for k in self.kinds
                ]
        return self._layouts[key]

    # ------------------------------------------------------------------ embeddings

    def embed_text(self, ids, start=0):
        """start: first text position, an int or a per-sample [B] tensor (vqa answers)."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        pos = pos + (start[:, None] if torch.is_tensor(start) else start)
        return self.text_emb(ids) + self.text_pos(pos)

    def embed_image(self, ids, start: int = 0):
        W = self.cfg.grid[1]
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.image_emb(ids) + self.row_pos(pos // W) + self.col_pos(pos % W)

    def embed(self, direction: str, text_ids, image_ids, answer_ids=None, text_lens=None):
        t, i = self.embed_text(text_ids), self.embed_image(image_ids)
        if direction == VQA:
            start = text_ids.shape[1] if text_lens is None else text_lens.to(text_ids.device)
            x = torch.cat([t, i, self.embed_text(answer_ids, start)], dim=1)
        else:
            x = torch.cat([t, i] if direction == T2I else [i, t], dim=1)
        return x + self.dir_emb.weight[DIRS.index(direction)]

    # ------------------------------------------------------------------ forward

    def forward(
        self, direction: str, text_ids, image_ids, text_lens=None, caches=None, answer_ids=None
    ):
        """text_ids [B, T], image_ids [B, H*W] (inputs, already shifted) -> hidden [B, L, d].

        vqa: text_ids is the question (padded, `text_lens`), answer_ids [B, A] the answer's
        inputs. Returns the final hidden states after ln_f; use `text_logits` / `image_logits`
        on the slice from `split`. `caches` (list of (k, v) per layer) is filled for KV-cached
        decoding. text2image also runs on the first n < H*W image tokens (a prefill needs only
        [text | BOI]: the image is causal, so those positions' outputs are the same).
        """
        if direction not in DIRS:
            raise ValueError(f"direction must be one of {DIRS}, got {direction!r}")
        if (answer_ids is not None) != (direction == VQA):
            raise ValueError("answer_ids is required for vqa and only for vqa")
        T = text_ids.shape[1]
        A = 0 if answer_ids is None else answer_ids.shape[1]
        if T + A > self.cfg.text_len:
            raise ValueError(
                f"text of {T + A} tokens exceeds the model's text_len={self.cfg.text_len}"
            )
        n = image_ids.shape[1]
        if n > self.cfg.n_image or (n < self.cfg.n_image and direction != T2I):
            raise ValueError(
                f"image_ids has {n} tokens; the grid has {self.cfg.n_image} (fewer: text2image "
                "prefixes only)"
            )
        prefix = T + n if n < self.cfg.n_image else None
        lays = self.layouts_for(direction, T, A, prefix)
        x = self.drop(self.embed(direction, text_ids, image_ids, answer_ids, text_lens))
        for i, blk in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if self.grad_checkpointing and self.training and cache is None:
                x = checkpoint(blk, x, lays[i], text_lens, use_reentrant=False)
            else:
                x = blk(x, lays[i], text_lens, cache)
        return self.ln_f(x)

    def split(self, direction: str, h, T: int):
        """hidden -> (text part, image part); vqa's text part is the answer."""
        n = self.cfg.n_image
        if direction == VQA:
            return h[:, T + n :], h[:, T : T + n]
        return (h[:, :T], h[:, T:]) if direction == T2I else (h[:, n:], h[:, :n])

    def text_logits(self, h):
        return self.text_head(h)

    def image_logits(self, h):
        return self.image_head(h)

    # ------------------------------------------------------------------ decoding

    def new_caches(self, B: int, L: int, device, dtype=torch.float32) -> list[LayerCache]:
        hd = self.cfg.n_embd // self.cfg.n_head
        return [
            LayerCache(
                torch.zeros(B, self.cfg.n_head, L, hd, device=device, dtype=dtype),
                torch.zeros(B, self.cfg.n_head, L, hd, device=device, dtype=dtype),
            )
            for _ in self.blocks
        ]

    def step_layouts(self, direction: str, T: int) -> list:
        """The layouts decoding steps use (vqa: sized for the longest answer, so one layout
        serves every step)."""
        return self.layouts_for(direction, T, self.cfg.text_len - T if direction == VQA else 0)

    def step(self, direction: str, token, pos, T: int, caches, text_lens=None):
        """Feed the input token at sequence position `pos`; returns the hidden state [B, d].

        pos: an int, or an int64 [1] tensor on the model's device (no host sync, no Python
        branch on its value: the step can be compiled once or captured in a CUDA graph).
        T: the source's text length (vqa: the padded question, real lengths in text_lens)."""
        n = self.cfg.n_image
        if direction == T2I:
            i = pos - T
            W = self.cfg.grid[1]
            x = (
                self.image_emb(token)
                + self.row_pos(_at(i // W, token))
                + self.col_pos(_at(i % W, token))
            )
        elif direction == I2T:
            x = self.text_emb(token) + self.text_pos(_at(pos - n, token))
        else:  # answer token j = pos - T - n continues the question's positions
            start = T if text_lens is None else text_lens.to(token.device)
            x = self.text_emb(token) + self.text_pos(_at(start + (pos - T - n), token))
        x = x + self.dir_emb.weight[DIRS.index(direction)]
        lays = self.step_layouts(direction, T)
        for i, blk in enumerate(self.blocks):
            x = blk.step(x, lays[i], pos, caches[i], text_lens)
        return self.ln_f(x)


def _at(p, token: torch.Tensor) -> torch.Tensor:
    """A position (int, [1] or [B] tensor) as a [B] index tensor on token's device."""
    if not isinstance(p, torch.Tensor):
        p = torch.tensor(p, device=token.device)
    return p.expand(token.shape[0])
