"""VQGAN-style image tokenizer: conv encoder -> vector quantizer -> conv decoder.

Architecture: a pixel-unshuffle stem (patch p), then residual conv levels, each extra level
halving the resolution, so f = p * 2**(levels-1). With one level and token_kernel=1 each
token is a function of its own f x f patch only (used for the shapes demo, whose objects
sit in cells aligned with the token grid); deeper conv trunks suit real images.

The quantizer calls `vilg.ops.vq_quantize` (nearest code) and does the straight-through
estimator here. Codebook health: data (k-means) init on the first batch, EMA codebook
updates (or l2-normalised codes with a learned codebook), and restart of dead codes from
current encoder outputs. Optional losses: a perceptual term on a small *randomly initialised,
frozen* conv net (no pretrained weights exist offline; it is a feature-space L2, not LPIPS)
and a patch-GAN hinge loss.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vilg import ops


@dataclass
class VQConfig:
    image_size: int = 48
    patch: int = 16  # pixel-unshuffle stem: the trunk starts at image_size / patch
    channels: tuple = (256,)  # trunk width per level; each extra level halves the resolution
    token_kernel: int = 1  # conv kernel at the token grid (1: a token sees only its patch)
    blocks: int = 2  # residual blocks per level
    codebook_size: int = 128
    code_dim: int = 32
    beta: float = 0.25  # commitment weight
    codebook_mode: str = "ema"  # "ema" or "l2" (l2-normalised learned codebook)
    ema_decay: float = 0.95
    dead_after: float = 0.03  # restart codes whose EMA usage falls below this count / step
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start: int = 1000

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if not self.channels:
            raise ValueError("channels must have at least one level")
        if self.image_size % self.f:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by "
                f"f = patch * 2**(levels-1) = {self.f}"
            )
        if self.codebook_mode not in ("ema", "l2"):
            raise ValueError(f"codebook_mode must be 'ema' or 'l2', got {self.codebook_mode!r}")

    @property
    def f(self) -> int:
        """Downsampling factor: image side / token grid side."""
        return self.patch * 2 ** (len(self.channels) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.f
        return g, g

    def to_dict(self) -> dict:
        return asdict(self)


class ChanNorm(nn.Module):
    """LayerNorm over channels at each position (no statistics shared across positions)."""

    def __init__(self, ch: int):
        super().__init__()
        self.ln = nn.LayerNorm(ch)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, ch: int, k: int = 3):
        super().__init__()
        self.n1 = ChanNorm(ch)
        self.c1 = nn.Conv2d(ch, ch, k, padding=k // 2)
        self.n2 = ChanNorm(ch)
        self.c2 = nn.Conv2d(ch, ch, k, padding=k // 2)

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return x + self.c2(F.silu(self.n2(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, n = cfg.channels, len(cfg.channels)
        layers = [nn.PixelUnshuffle(cfg.patch), nn.Conv2d(3 * cfg.patch**2, ch[0], 1)]
        for i, c in enumerate(ch):
            k = cfg.token_kernel if i == n - 1 else 3
            layers += [ResBlock(c, k) for _ in range(cfg.blocks)]
            if i < n - 1:
                layers.append(nn.Conv2d(c, ch[i + 1], 2, stride=2))  # non-overlapping
        layers += [ChanNorm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x * 2 - 1)


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, n = cfg.channels[::-1], len(cfg.channels)
        layers = [nn.Conv2d(cfg.code_dim, ch[0], 1)]
        for i, c in enumerate(ch):
            k = cfg.token_kernel if i == 0 else 3
            layers += [ResBlock(c, k) for _ in range(cfg.blocks)]
            if i < n - 1:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, ch[i + 1], 3, padding=1),
                ]
        layers += [
            ChanNorm(ch[-1]),
            nn.SiLU(),
            nn.Conv2d(ch[-1], 3 * cfg.patch**2, 1),
            nn.PixelShuffle(cfg.patch),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z) * 0.5 + 0.5  # linear output in image units; clamp when saving


class Quantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.codebook_size, cfg.code_dim
        self.codebook = nn.Parameter(
            torch.randn(K, D) * 0.1, requires_grad=cfg.codebook_mode == "l2"
        )
        self.register_buffer("ema_count", torch.ones(K))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("usage", torch.ones(K))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        # codes the trained tokenizer may emit (keep_used); all while training
        self.register_buffer("live", torch.ones(K, dtype=torch.bool))

    # checkpoints written before `live` existed load with every code live
    OPTIONAL_STATE = ("live",)

    def _prep(self, z):
        return F.normalize(z, dim=-1) if self.cfg.codebook_mode == "l2" else z

    def book(self):
        return self._prep(self.codebook)

    @torch.no_grad()
    def kmeans_init(self, flat: torch.Tensor, iters: int = 10):
        K = self.cfg.codebook_size
        x = self._prep(flat.float())
        g = torch.Generator(device="cpu").manual_seed(0)
        idx = torch.randint(len(x), (K,), generator=g)
        c = x[idx].clone() + 1e-3 * torch.randn(K, x.shape[1], generator=g).to(x)
        for _ in range(iters):
            a = ops.vq_quantize(x.contiguous(), c.contiguous())
            counts, sums = ops.vq_code_stats(a, x.contiguous(), K)
            live = counts > 0
            c[live] = sums[live] / counts[live, None]
            c[~live] = x[torch.randint(len(x), (int((~live).sum()),), generator=g)]
        self.codebook.data.copy_(c)
        self.ema_sum.copy_(c)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    def forward(self, z):
        """z [B, D, H, W] -> (z_q straight-through, indices [B, H, W], loss, stats)."""
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        if self.training and not bool(self.initialised):
            self.kmeans_init(flat.detach())
        x = self._prep(flat.float())
        book = self.book().float()
        idx = self._nearest(x.detach(), book.detach())
        q = ops.vq_embed(idx, book) if self.cfg.codebook_mode == "ema" else book[idx]
        commit = F.mse_loss(x, q.detach())
        loss = self.cfg.beta * commit
        if self.cfg.codebook_mode == "l2":
            loss = loss + F.mse_loss(q, x.detach())
        if self.training:
            self._update(idx, x.detach())
        q_st = x + (q - x).detach()
        z_q = q_st.to(z.dtype).view(B, H, W, D).permute(0, 3, 1, 2)
        return z_q, idx.view(B, H, W), loss, {"commit": commit.detach()}

    @torch.no_grad()
    def _update(self, idx, x):
        K, decay = self.cfg.codebook_size, self.cfg.ema_decay
        counts, sums = ops.vq_code_stats(idx, x.contiguous(), K)
        self.usage.mul_(decay).add_(counts, alpha=1 - decay)
        if self.cfg.codebook_mode == "ema":
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + K * 1e-5) * n
            self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        dead = self.usage < self.cfg.dead_after
        nd = int(dead.sum())
        if nd:
            # restart dead codes on the worst-served current encoder outputs, so the free
            # codes go where the quantisation error is (not onto the most common patch)
            err = (x - self.book()[idx].float()).pow(2).sum(1)
            pick = x[err.topk(min(nd, len(x))).indices]
            pick = pick[torch.arange(nd, device=x.device) % len(pick)]
            pick = pick + 1e-3 * torch.randn_like(pick)
            self.codebook.data[dead] = pick.to(self.codebook.dtype)
            self.ema_sum[dead] = pick
            self.ema_count[dead] = 1.0
            self.usage[dead] = 1.0

    def _nearest(self, x, book):
        """Nearest code of each row; outside training only among the live codes."""
        if self.training or bool(self.live.all()):
            return ops.vq_quantize(x.contiguous(), book.contiguous())
        ids = self.live.nonzero().squeeze(1)
        return ids[ops.vq_quantize(x.contiguous(), book[ids].contiguous())]

    @torch.no_grad()
    def keep_used(self, counts: torch.Tensor) -> None:
        """Restrict the trained tokenizer to the codes its training data uses (counts [K]).

        Dead-code restarts leave spare codes close to used ones: on data made of repeated
        patches (the shapes scenes) an encoder output can sit within float32 rounding of two
        codes, so the code would flip with the batch it is encoded in, and the generator
        would meet, at inference, a code it never saw in training.
        """
        used = counts.to(self.live.device) > 0
        if not bool(used.any()):
            raise ValueError("keep_used: no code is used")
        self.live.copy_(used)

    @torch.no_grad()
    def indices(self, z):
        B, D, H, W = z.shape
        x = self._prep(z.permute(0, 2, 3, 1).reshape(-1, D).float())
        return self._nearest(x, self.book().float()).view(B, H, W)

    def embed(self, idx):
        """indices [B, H, W] -> z [B, D, H, W]."""
        q = ops.vq_embed(idx.reshape(-1), self.book().detach().contiguous())
        B, H, W = idx.shape
        return q.view(B, H, W, -1).permute(0, 3, 1, 2)


class RandomFeatures(nn.Module):
    """Frozen, randomly initialised conv features for an optional 'perceptual' term."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        chans = [3, 32, 64, 64]
        self.convs = nn.ModuleList()
        for a, b in itertools.pairwise(chans):
            c = nn.Conv2d(a, b, 3, padding=1)
            with torch.no_grad():
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) / math.sqrt(a * 9))
                c.bias.zero_()
            self.convs.append(c)
        self.requires_grad_(False)

    def forward(self, x):
        feats = []
        for i, c in enumerate(self.convs):
            x = F.relu(c(x))
            feats.append(x)
            if i < len(self.convs) - 1:
                x = F.avg_pool2d(x, 2)
        return feats


class PatchDiscriminator(nn.Module):
    def __init__(self, ch: int = 32, layers: int = 3):
        super().__init__()
        mods, c = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)], ch
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x * 2 - 1)


class VQGAN(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = Decoder(cfg)
        self.features = RandomFeatures() if cfg.perceptual_weight > 0 else None
        self.disc = PatchDiscriminator() if cfg.gan_weight > 0 else None

    def forward(self, x):
        z = self.encoder(x)
        z_q, idx, qloss, stats = self.quantizer(z)
        return self.decoder(z_q), idx, qloss, stats

    @torch.no_grad()
    def encode(self, x) -> torch.Tensor:
        """images [B, 3, S, S] in [0,1] -> token indices [B, H, W] (no codebook update)."""
        return self.quantizer.indices(self.encoder(x))

    def decode_indices(self, idx) -> torch.Tensor:
        return self.decoder(self.quantizer.embed(idx))

    def recon_loss(self, x, xr) -> dict:
        c = self.cfg
        out = {"l1": F.l1_loss(xr, x), "l2": F.mse_loss(xr, x)}
        total = c.l1_weight * out["l1"] + c.l2_weight * out["l2"]
        if self.features is not None:
            p = sum(F.mse_loss(a, b) for a, b in zip(self.features(xr), self.features(x)))
            out["perceptual"] = p
            total = total + c.perceptual_weight * p
        out["recon"] = total
        return out


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = F.mse_loss(x.float(), y.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def code_stats(indices: torch.Tensor, K: int) -> dict:
    counts = torch.bincount(indices.reshape(-1), minlength=K).float()
    p = counts / counts.sum()
    ent = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).float().mean()),
        "perplexity": math.exp(ent),
    }
