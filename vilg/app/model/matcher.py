"""A small CLIP-like image-text matcher, used to rerank generated samples.

Image side: a strided conv stack whose final feature map is flattened (not pooled), so the
embedding keeps where things are. Text side: a small bidirectional transformer, mean-pooled
over real tokens. Trained contrastively (symmetric InfoNCE) with extra hard negatives: the
same caption with one attribute of one object changed, which is exactly the kind of mistake
reranking has to catch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MatcherConfig:
    image_size: int = 48
    text_vocab: int = 256
    text_len: int = 48
    dim: int = 128
    embed_dim: int = 128
    text_layers: int = 2
    heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class TextEncoder(nn.Module):
    def __init__(self, cfg: MatcherConfig):
        super().__init__()
        self.emb = nn.Embedding(cfg.text_vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.text_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.enc = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.out = nn.Linear(cfg.dim, cfg.embed_dim)

    def forward(self, ids, lens):
        T = ids.shape[1]
        pad = torch.arange(T, device=ids.device)[None] >= lens[:, None]
        h = self.enc(
            self.emb(ids) + self.pos(torch.arange(T, device=ids.device)), src_key_padding_mask=pad
        )
        keep = (~pad).float()[..., None]
        return self.out((h * keep).sum(1) / keep.sum(1).clamp(min=1))


class ImageEncoder(nn.Module):
    def __init__(self, cfg: MatcherConfig):
        super().__init__()
        s = cfg.image_size
        self.net = nn.Sequential(
            nn.Conv2d(3, 64, 4, stride=4),
            nn.GELU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1),
            nn.GELU(),
        )
        with torch.no_grad():
            n = self.net(torch.zeros(1, 3, s, s)).numel()
        self.out = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n, 2 * cfg.dim),
            nn.GELU(),
            nn.Linear(2 * cfg.dim, cfg.embed_dim),
        )

    def forward(self, x):
        return self.out(self.net(x * 2 - 1))


class Matcher(nn.Module):
    def __init__(self, cfg: MatcherConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def embed_text(self, ids, lens):
        return F.normalize(self.text(ids, lens), dim=-1)

    def loss(self, images, ids, lens, neg_ids=None, neg_lens=None):
        """Symmetric InfoNCE; hard negative captions only add columns to image->text."""
        zi, zt = self.embed_image(images), self.embed_text(ids, lens)
        scale = self.logit_scale.exp().clamp(max=100)
        logits = scale * zi @ zt.t()
        target = torch.arange(len(zi), device=zi.device)
        l_t = F.cross_entropy(logits.t(), target)
        if neg_ids is not None:
            zn = self.embed_text(neg_ids, neg_lens)
            logits = torch.cat([logits, scale * zi @ zn.t()], dim=1)
        l_i = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean()
        return (l_i + l_t) / 2, acc

    @torch.no_grad()
    def score(self, images, ids, lens):
        """Cosine similarity of each image with its own text: images [B,...], ids [B, T]."""
        return (self.embed_image(images) * self.embed_text(ids, lens)).sum(-1)
