"""The four training stages, each a `Trainer` subclass.

VQTrainer        image tokenizer (reconstruction + codebook/commitment [+ perceptual, GAN])
MatcherTrainer   contrastive image-text matcher for reranking
GeneratorTrainer unified transformer: text->image + image->text (+ VQA), caption dropout
EndToEndTrainer  generator whose image-position hidden states also drive the image decoder
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vilg.app import checkpoint as ckpt
from vilg.app.data import prompts, shapes
from vilg.app.data.pool import Pool
from vilg.app.data.sequences import i2t_batch, pad, t2i_batch, vqa_batch
from vilg.app.data.text_tokenizer import TextTokenizer
from vilg.app.images import save_grid
from vilg.app.model.matcher import Matcher
from vilg.app.model.transformer import I2T, T2I, VQA, UnifiedTransformer
from vilg.app.model.vqgan import VQGAN, code_stats, psnr
from vilg.app.train import distributed as D
from vilg.app.train.trainer import TrainConfig, Trainer


def _indices(seed: int, step: int, micro: int, n: int, b: int) -> tuple[np.ndarray, object]:
    rng = np.random.default_rng([seed, step, micro])
    return rng.integers(n, size=b), rng


# ------------------------------------------------------------------ image tokenizer


@torch.no_grad()
def encode_pool(vq: VQGAN, pool: Pool, device, batch: int = 512) -> torch.Tensor:
    """Token ids [N, H*W] of every image of the pool (eval mode, in batches)."""
    vq.eval().to(device)
    out = [
        vq.encode(pool.image_tensor(np.arange(s, min(s + batch, len(pool)))).to(device))
        .flatten(1)
        .cpu()
        for s in range(0, len(pool), batch)
    ]
    return torch.cat(out)


class VQTrainer(Trainer):
    name = "tokenizer"

    def __init__(
        self, model: VQGAN, cfg: TrainConfig, out_dir, pool: Pool, val: Pool, device="cpu"
    ):
        self.pool, self.val = pool, val
        super().__init__(model, cfg, out_dir, device)
        self.disc_opt = (
            torch.optim.Adam(model.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
            if model.disc is not None
            else None
        )

    def parameters(self):
        return [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and not n.startswith("disc.")
        ]

    def model_config(self):
        return {"kind": "vqgan", **self.model.cfg.to_dict()}

    def loss(self, step, micro):
        m, c = self.model, self.model.cfg
        idx, _ = _indices(self.cfg.seed, step, micro, len(self.pool), self.cfg.batch_size)
        x = self.pool.image_tensor(idx).to(self.device)
        xr, _codes, qloss, _ = m(x)
        rl = m.recon_loss(x, xr)
        loss = rl["recon"] + qloss
        logs = {"recon": rl["recon"].detach(), "psnr": psnr(x, xr.detach().clamp(0, 1))}
        if m.disc is not None and step >= c.gan_start:
            # hinge GAN: generator term here, discriminator updated in after_step
            g = -m.disc(xr).mean()
            loss = loss + c.gan_weight * g
            self._last = (x.detach(), xr.detach())
            logs["gan_g"] = g.detach()
        return loss, logs, len(idx)

    def after_step(self, step):
        if self.disc_opt is None or not hasattr(self, "_last"):
            return
        x, xr = self._last
        d = self.model.disc
        loss = F.relu(1 - d(x)).mean() + F.relu(1 + d(xr)).mean()
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()

    @torch.no_grad()
    def finish(self):
        """Keep the codes the training images use: the codes the generator is trained on."""
        q = self.model.quantizer
        q.live.fill_(True)
        codes = encode_pool(self.model, self.pool, self.device)
        q.keep_used(torch.bincount(codes.flatten(), minlength=self.model.cfg.codebook_size))

    def evaluate(self):
        res = evaluate_vq(self.model, self.val, self.device)
        x = self.val.image_tensor(np.arange(min(8, len(self.val)))).to(self.device)
        rec = self.model.decode_indices(self.model.encode(x)).clamp(0, 1)
        save_grid(
            torch.cat([x, rec]).cpu(),
            self.out_dir / "samples" / f"step_{self.step:07d}.png",
            nrow=len(x),
        )  # top: input, bottom: recon
        return res


@torch.no_grad()
def evaluate_vq(model: VQGAN, val: Pool, device="cpu", n: int = 512) -> dict:
    model.eval()
    x = val.image_tensor(np.arange(min(n, len(val)))).to(device)
    codes = model.encode(x)
    xr = model.decode_indices(codes).clamp(0, 1)
    return {
        "psnr": round(psnr(x, xr), 3),
        **{k: round(v, 4) for k, v in code_stats(codes, model.cfg.codebook_size).items()},
    }


# ------------------------------------------------------------------ matcher


def perturb_caption(scene, lang: str, rng: np.random.Generator) -> str:
    """The canonical caption with one attribute of one object changed."""
    return shapes.caption(tuple(sorted(prompts.perturb_objects(scene, rng))), lang)


class MatcherTrainer(Trainer):
    name = "matcher"

    def __init__(
        self,
        model: Matcher,
        cfg: TrainConfig,
        out_dir,
        pool: Pool,
        val: Pool,
        tok: TextTokenizer,
        device="cpu",
        shuffle: bool = False,
        paraphrase: float = 0.0,
    ):
        self.pool, self.val, self.tok = pool, val, tok
        # shapes captions in a random order and wording (as the generator's prompts), so that
        # reranking scores any prompt alike
        self.shuffle, self.paraphrase = shuffle, paraphrase
        super().__init__(model, cfg, out_dir, device)

    def model_config(self):
        return {"kind": "matcher", **self.model.cfg.to_dict()}

    def _texts(self, pool, idx, rng):
        langs = pool.langs
        caps, negs = [], []
        for i in idx:
            lang = langs[int(rng.integers(len(langs)))]
            if pool.scenes is None or not (self.shuffle or self.paraphrase):
                caps.append(self.tok.encode(pool.texts[lang][i])[: self.model.cfg.text_len])
                if pool.scenes is not None:  # canonical captions, a canonical hard negative
                    negs.append(self.tok.encode(perturb_caption(pool.scenes[i], lang, rng)))
                continue
            pos, neg = prompts.caption_pair(
                pool.scenes[i], lang, rng, self.shuffle, self.paraphrase
            )
            caps.append(self.tok.encode(pos)[: self.model.cfg.text_len])
            negs.append(self.tok.encode(neg)[: self.model.cfg.text_len])
        ids, lens = pad(caps, self.tok.pad_id)
        if negs:
            nids, nlens = pad(negs, self.tok.pad_id)
            return ids, lens, nids, nlens
        return ids, lens, None, None

    def loss(self, step, micro):
        idx, rng = _indices(self.cfg.seed, step, micro, len(self.pool), self.cfg.batch_size)
        x = self.pool.image_tensor(idx).to(self.device)
        ids, lens, nids, nlens = (
            t if t is None else t.to(self.device) for t in self._texts(self.pool, idx, rng)
        )
        loss, acc = self.model.loss(x, ids, lens, nids, nlens)
        return loss, {"loss": loss.detach(), "acc": acc}, len(idx)

    def evaluate(self):
        rng = np.random.default_rng(123)
        idx = np.arange(min(256, len(self.val)))
        x = self.val.image_tensor(idx).to(self.device)
        ids, lens, nids, nlens = self._texts(self.val, idx, rng)
        zi = self.model.embed_image(x)
        zt = self.model.embed_text(ids.to(self.device), lens.to(self.device))
        out = {
            "retrieval_acc": float(
                ((zi @ zt.t()).argmax(1) == torch.arange(len(idx))).float().mean()
            )
        }
        if nids is not None:
            zn = self.model.embed_text(nids.to(self.device), nlens.to(self.device))
            out["hard_negative_acc"] = float(((zi * zt).sum(1) > (zi * zn).sum(1)).float().mean())
        return out


# ------------------------------------------------------------------ generator


def _check_fracs(fracs) -> tuple:
    """(t2i_frac, cap_frac, vqa_frac): rows per stream as fractions of the batch's images."""
    fracs = tuple(float(f) for f in fracs)
    if len(fracs) != 3:
        raise ValueError(f"expected 3 stream fractions (t2i, cap, vqa), got {fracs}")
    if min(fracs) < 0 or sum(fracs) <= 0:
        raise ValueError(
            f"stream fractions (t2i, cap, vqa) must be >= 0 and not all 0, got {fracs}"
        )
    return fracs


def _check_schedule(schedule) -> list[tuple[float, tuple]]:
    out = []
    for entry in schedule or []:
        if len(entry) != 2:
            raise ValueError(f"schedule entries are [start, [t2i, cap, vqa]], got {entry}")
        start = float(entry[0])
        if not 0.0 <= start <= 1.0 or (out and start <= out[-1][0]):
            raise ValueError(f"schedule starts must increase within [0, 1], got {schedule}")
        out.append((start, _check_fracs(entry[1])))
    return out


def _check_kind_weights(weights) -> dict | None:
    if weights is None:
        return None
    kinds = shapes.QUESTION_KINDS
    w = {str(k): float(v) for k, v in dict(weights).items()}
    if set(w) - set(kinds) or min(w.values(), default=0) < 0 or sum(w.values()) <= 0:
        raise ValueError(
            f"kind_weights must map question kinds {list(kinds)} to weights >= 0, not all 0; "
            f"got {weights}"
        )
    return w


class GeneratorTrainer(Trainer):
    name = "generator"
    splits_batch_over_ranks = True

    def __init__(
        self,
        model: UnifiedTransformer,
        cfg: TrainConfig,
        out_dir,
        pool: Pool,
        codes: torch.Tensor,
        val: Pool,
        val_codes: torch.Tensor,
        tok: TextTokenizer,
        p_uncond: float = 0.1,
        t2i_frac: float = 1.0,
        cap_frac: float = 0.5,
        vqa_frac: float = 0.5,
        device="cpu",
        vq: VQGAN | None = None,
        kind_weights: dict | None = None,
        vqa_weight: float = 1.0,
        schedule: list | None = None,
        dist: D.DistInfo | None = None,
        t2i_shuffle: bool = False,
        t2i_paraphrase: float = 0.0,
    ):
        self.pool, self.codes, self.val, self.val_codes, self.tok = pool, codes, val, val_codes, tok
        self.vq = vq  # only for sample grids
        self.p_uncond = p_uncond
        # rows per stream as fractions of the batch's images; VQA rows are short (a question
        # and a 1-2 token answer), so vqa_frac > 1 asks several questions per image cheaply
        self.fracs = _check_fracs((t2i_frac, cap_frac, vqa_frac))
        # captions and text->image converge long before VQA, so the mix can change as training
        # goes: schedule [[start, [t2i, cap, vqa]], ...] uses each mix from step start * steps
        self.schedule = _check_schedule(schedule)
        self.kind_weights = _check_kind_weights(kind_weights)  # None: uniform over kinds
        # an answer is 1-2 tokens against a caption's ~15: weight each answer token this much
        self.vqa_weight = vqa_weight
        self.cap_ids = {lang: [tok.encode(t) for t in caps] for lang, caps in pool.texts.items()}
        # text->image prompts of shapes scenes: objects in a random order (t2i_shuffle) and,
        # with probability t2i_paraphrase, a random wording of the prompt grammar; captions
        # stay canonical (the captioner has one answer to learn)
        self.t2i_shuffle, self.t2i_paraphrase = bool(t2i_shuffle), float(t2i_paraphrase)
        if not 0.0 <= self.t2i_paraphrase <= 1.0:
            raise ValueError(f"t2i_paraphrase must be in [0, 1], got {t2i_paraphrase}")
        super().__init__(model, cfg, out_dir, device, dist)

    def model_config(self):
        return {"kind": "generator", **self.model.cfg.to_dict()}

    def fracs_at(self, step: int) -> tuple:
        fracs = self.fracs
        for start, f in self.schedule:
            if step >= start * self.cfg.steps:
                fracs = f
        return fracs

    def make_batches(self, pool, codes, cap_ids, idx, rng, train=True, fracs=None):
        """Three streams over the batch's images idx: text->image, captions and VQA, each
        padded to its own length. Row j of a stream uses image idx[j mod B] (VQA rows start
        after the caption rows, so an image is captioned or questioned first)."""
        tok, B, T = self.tok, len(idx), self.model.cfg.text_len
        langs = pool.langs
        fracs = self.fracs if fracs is None else fracs
        n_t2i, n_cap, n_vqa = (max(round(B * f), 1) if f > 0 else 0 for f in fracs)
        if pool.scenes is None:  # no scenes, no questions: those rows become captions
            n_cap, n_vqa = n_cap + n_vqa, 0
        n = max(n_t2i, n_cap + n_vqa)
        rows = np.asarray(idx)[np.arange(n) % B]
        lang = [langs[int(rng.integers(len(langs)))] for _ in range(n)]
        caps = [cap_ids[lg][i][: T - 1] for lg, i in zip(lang, rows)]
        img = codes[torch.as_tensor(rows)]
        t2i = None
        if n_t2i:
            t2i_caps = caps[:n_t2i]  # the caption rows below keep the canonical captions
            if train and pool.scenes is not None and (self.t2i_shuffle or self.t2i_paraphrase):
                texts = [
                    prompts.sample(pool.scenes[i], lg, rng, self.t2i_shuffle, self.t2i_paraphrase)
                    for lg, i in zip(lang[:n_t2i], rows[:n_t2i])
                ]
                enc = tok.tok.encode_batch(texts, add_special_tokens=False)
                t2i_caps = [e.ids[: T - 1] for e in enc]
            drop = torch.from_numpy(rng.random(n_t2i) < self.p_uncond) if train else None
            t2i = t2i_batch(tok, t2i_caps, img[:n_t2i], self.model.boi, drop)
            t2i["index"] = torch.as_tensor(rows[:n_t2i])  # pool index per row (end-to-end)
        cap = None
        if n_cap:
            cap = i2t_batch(
                tok,
                [tok.lang_prompt(lg) for lg in lang[:n_cap]],
                [c[: T - 2] for c in caps[:n_cap]],
                img[:n_cap],
            )
        vqa = None
        if n_vqa:
            questions, answers = [], []
            for lg, i in zip(lang[n_cap : n_cap + n_vqa], rows[n_cap : n_cap + n_vqa]):
                q, a = pool.question(int(i), lg, rng, self.kind_weights if train else None)
                questions.append(tok.encode(q))
                answers.append(tok.encode(a))
            vqa = vqa_batch(tok, questions, answers, img[n_cap : n_cap + n_vqa])
        return t2i, cap, vqa

    def _text_stream(self, b):
        m = self.model
        b = {k: v.to(self.device) for k, v in b.items()}
        if "question" in b:
            q = b["question"]
            h = m(VQA, q, b["image"], b["question_lens"], answer_ids=b["answer_in"])
            lg = m.text_logits(m.split(VQA, h, q.shape[1])[0])
        else:
            h = m(I2T, b["text"], b["image"], b["text_lens"])
            lg = m.text_logits(m.split(I2T, h, b["text"].shape[1])[0])
        mask = b["mask"]
        return (
            F.cross_entropy(lg[mask].float(), b["target"][mask], reduction="sum"),
            int(mask.sum()),
            lg,
        )

    def rank_rows(self, t2i, cap, vqa):
        """This rank's rows of each stream of the global batch, and the global counts that
        normalise its loss share (every rank builds the same global batch)."""
        norm = {
            "img": 0 if t2i is None else t2i["target"].numel(),
            "cap": 0 if cap is None else int(cap["mask"].sum()),
            "vqa": 0 if vqa is None else int(vqa["mask"].sum()),
        }
        out = []
        for b in (t2i, cap, vqa):
            if b is not None:
                n = len(b["target"])
                if n < self.dist.world:  # every rank must run the same forwards (FSDP)
                    raise ValueError(
                        f"a stream of {n} rows cannot be split over {self.dist.world} ranks; "
                        "raise batch_size"
                    )
                b = {k: v[D.rows(n, self.dist)] for k, v in b.items()}
            out.append(b)
        return out, norm

    def stream_losses(self, t2i, cap, vqa, norm: dict | None = None):
        """norm (distributed): global target counts per stream; the losses are then this
        rank's shares (its sums over the global counts), which add up over the ranks."""
        m = self.model
        l_img, lg, hi = None, None, None
        if t2i is not None:
            t2i = {k: v.to(self.device) for k, v in t2i.items()}
            h = m(T2I, t2i["text"], t2i["image_in"], t2i["text_lens"])
            _, hi = m.split(T2I, h, t2i["text"].shape[1])
            lg = m.image_logits(hi)
            flat = (lg.reshape(-1, lg.shape[-1]).float(), t2i["target"].reshape(-1))
            if norm is None:
                l_img = F.cross_entropy(*flat)
            else:
                l_img = F.cross_entropy(*flat, reduction="sum") / norm["img"]
        s_cap, n_cap, lg_cap = self._text_stream(cap) if cap is not None else (0.0, 0, None)
        s_vqa, n_vqa, lg_vqa = self._text_stream(vqa) if vqa is not None else (0.0, 0, None)
        if norm is not None:
            n_cap, n_vqa = norm["cap"], norm["vqa"]
        # one weighted mean over every target text token of both streams (measured better for
        # captions than a separate mean per stream)
        w = self.vqa_weight
        l_txt = (s_cap + w * s_vqa) / max(n_cap + w * n_vqa, 1) if n_cap + n_vqa else None
        return {
            "img": l_img,
            "txt": l_txt,
            "cap": s_cap / n_cap if n_cap else None,
            "vqa": s_vqa / n_vqa if n_vqa else None,
            "lg_img": lg,
            "lg_cap": lg_cap,
            "lg_vqa": lg_vqa,
            "h_img": hi,
            "t2i": t2i,
        }

    @staticmethod
    def total(r) -> torch.Tensor:
        return sum(r[k] for k in ("img", "txt") if r[k] is not None)

    def train_streams(self, step, micro):
        """Stream losses, their logs and the image count of one training micro-batch, under
        the task mix of its step."""
        idx, rng = _indices(self.cfg.seed, step, micro, len(self.pool), self.cfg.batch_size)
        fracs = self.fracs_at(step)
        batches = self.make_batches(self.pool, self.codes, self.cap_ids, idx, rng, fracs=fracs)
        norm = None
        if self.dist is not None:
            batches, norm = self.rank_rows(*batches)
        r = self.stream_losses(*batches, norm=norm)
        logs = {k: r[k].detach() for k in ("img", "cap", "vqa") if r[k] is not None}
        return r, logs, len(idx)

    def loss(self, step, micro):
        r, logs, n = self.train_streams(step, micro)
        return self.total(r), logs, n

    def evaluate(self):
        """Teacher-forced accuracies on validation scenes (greedy-equivalent per token)."""
        rng = np.random.default_rng(321)
        idx = np.arange(min(256, len(self.val)))
        cap_ids = {
            lang: [self.tok.encode(t) for t in caps[: len(idx)]]
            for lang, caps in self.val.texts.items()
        }
        t2i, cap, vqa = self.make_batches(self.val, self.val_codes, cap_ids, idx, rng, False)
        r = self.stream_losses(t2i, cap, vqa)

        def exact(lg, b):
            return round(
                ((lg.argmax(-1).cpu() == b["target"]) | ~b["mask"]).all(1).float().mean().item(), 4
            )

        out = {}
        if t2i is not None:
            img_ok = (r["lg_img"].argmax(-1).cpu() == t2i["target"]).all(1).float()
            out["val_img_loss"] = round(r["img"].item(), 4)
            out["tf_image_exact"] = round(img_ok.mean().item(), 4)
        if cap is not None:
            out["val_cap_loss"] = round(r["cap"].item(), 4)
            out["tf_caption_exact"] = exact(r["lg_cap"], cap)
        if vqa is not None:
            out["val_vqa_loss"] = round(r["vqa"].item(), 4)
            out["tf_vqa_exact"] = exact(r["lg_vqa"], vqa)
        if self.vq is not None and t2i is not None and self.is_main:
            # grid: teacher-forced codes of 8 prompts
            H, W = self.model.cfg.grid
            codes = r["lg_img"][:8].argmax(-1).view(-1, H, W).to(self.device)
            save_grid(
                self.vq.decode_indices(codes).clamp(0, 1).cpu(),
                self.out_dir / "samples" / f"step_{self.step:07d}.png",
                nrow=8,
            )
        return out


class EndToEndTrainer(GeneratorTrainer):
    """Adds the paper's end-to-end path: hidden states of the image positions -> z_head ->
    z_emb -> image decoder, with a reconstruction loss back-propagated into the generator
    (and the decoder, which is fine-tuned jointly)."""

    name = "end2end"

    def __init__(
        self,
        model,
        cfg,
        out_dir,
        pool,
        codes,
        val,
        val_codes,
        tok,
        vq: VQGAN,
        recon_weight: float = 1.0,
        **kw,
    ):
        if model.z_head is None:
            raise ValueError("end-to-end training needs a generator built with code_dim > 0")
        if kw.get("dist") is not None:  # the fine-tuned decoder sits outside the wrapped model
            raise ValueError("end-to-end training runs in one process (no --distributed yet)")
        self.recon_weight = recon_weight
        super().__init__(model, cfg, out_dir, pool, codes, val, val_codes, tok, vq=vq, **kw)
        if any(f[0] == 0 for f in [self.fracs] + [f for _, f in self.schedule]):
            raise ValueError("end-to-end training needs text->image rows (t2i_frac > 0)")
        self.vq.to(self.device)

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad] + list(
            self.vq.decoder.parameters()
        )

    # the fine-tuned decoder rides in each checkpoint, so a resume pairs it with its step
    def extra_files(self):
        return {"decoder.safetensors": self.vq.decoder.state_dict()}

    def load_extra_files(self, ckpt_dir):
        ckpt.load_model_state(self.vq.decoder, ckpt_dir / "decoder.safetensors")

    def export(self):
        super().export()
        ckpt.save_tensors(self.out_dir / "decoder.safetensors", self.vq.decoder.state_dict())

    def loss(self, step, micro):
        r, logs, n = self.train_streams(step, micro)
        keep = r["t2i"]["text_lens"] > 1  # reconstruction only for captioned samples
        x = self.pool.image_tensor(r["t2i"]["index"].cpu().numpy()).to(self.device)
        xr = self.decode_hidden(r["h_img"])
        l_rec = F.mse_loss(xr[keep].float(), x[keep]) if bool(keep.any()) else xr.sum() * 0
        loss = self.total(r) + self.recon_weight * l_rec
        return loss, {**logs, "rec": l_rec.detach()}, n

    def decode_hidden(self, hi):
        H, W = self.model.cfg.grid
        z = self.model.z_head(hi)  # [B, H*W, code_dim]
        z = z.transpose(1, 2).reshape(len(hi), -1, H, W)
        return self.vq.decoder(z)
