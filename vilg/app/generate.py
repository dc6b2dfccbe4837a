"""Inference: text->image (KV cache, sparse-aware decode, CFG, reranking), captioning
(greedy / beam) and VQA, from a trained run directory.

A run directory holds: tokenizer.json, tokenizer/ (VQGAN), generator/ (two-stage) and/or
end2end/ (end-to-end), matcher/. Each model folder has model.safetensors + config.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vilg import ops
from vilg.app import checkpoint as ckpt
from vilg.app.data.sequences import pad
from vilg.app.data.text_tokenizer import PromptError, TextTokenizer
from vilg.app.data.user import preprocess
from vilg.app.images import save_grid, to_uint8  # noqa: F401 -- callers import them from here
from vilg.app.model.matcher import Matcher, MatcherConfig
from vilg.app.model.stepper import Stepper
from vilg.app.model.transformer import I2T, T2I, VQA, GPTConfig, UnifiedTransformer
from vilg.app.model.vqgan import VQGAN, VQConfig


def _cfg(d: dict, cls):
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in d.items() if k in fields})


def load_model(folder: Path, kind: str):
    folder = Path(folder)
    conf = ckpt.load_json(folder / "config.json")
    if conf.get("kind") != kind:
        raise ckpt.CheckpointError(
            f"{folder} holds a {conf.get('kind')!r} model, expected {kind!r}"
        )
    cls, ccls = {
        "vqgan": (VQGAN, VQConfig),
        "generator": (UnifiedTransformer, GPTConfig),
        "matcher": (Matcher, MatcherConfig),
    }[kind]
    try:
        model = cls(_cfg(conf, ccls))
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"incompatible config in {folder}: {e}") from e
    ckpt.load_model_state(model, folder / "model.safetensors")
    return model.eval()


class Pipeline:
    def __init__(
        self,
        tok: TextTokenizer,
        vq: VQGAN,
        gen: UnifiedTransformer,
        matcher: Matcher | None = None,
        device="cpu",
        end_to_end: bool = False,
    ):
        self.tok, self.vq, self.gen, self.matcher = tok, vq, gen, matcher
        self.device = torch.device(device)
        self.end_to_end = end_to_end
        for m in (vq, gen, matcher):
            if m is not None:
                m.to(self.device).eval()
        g, v = gen.cfg, vq.cfg
        if g.text_vocab != tok.vocab_size:
            raise ckpt.CheckpointError(
                f"generator text vocabulary ({g.text_vocab}) does not "
                f"match the tokenizer ({tok.vocab_size})"
            )
        if g.image_vocab != v.codebook_size or tuple(g.grid) != tuple(v.grid):
            raise ckpt.CheckpointError(
                "generator and image tokenizer are incompatible "
                f"(codes {g.image_vocab} vs {v.codebook_size}, grid "
                f"{tuple(g.grid)} vs {tuple(v.grid)})"
            )
        if end_to_end and gen.z_head is None:
            raise ckpt.CheckpointError("this generator has no end-to-end head")

    @classmethod
    def load(cls, run_dir: str | Path, device="cpu", end_to_end: bool | None = None):
        run = Path(run_dir)
        if not run.is_dir():
            raise FileNotFoundError(
                f"no trained run at {run} (train one with `vilg demo` or `vilg train`)"
            )
        tok_path = run / "tokenizer.json"
        if not tok_path.exists():
            raise ckpt.CheckpointError(f"{run} has no tokenizer.json")
        tok = TextTokenizer.load(tok_path)
        vq = load_model(run / "tokenizer", "vqgan")
        e2e_dir = run / "end2end"
        if end_to_end is None:
            end_to_end = (e2e_dir / "model.safetensors").exists() and not (
                run / "generator" / "model.safetensors"
            ).exists()
        gen = load_model(e2e_dir if end_to_end else run / "generator", "generator")
        if end_to_end and (e2e_dir / "decoder.safetensors").exists():
            vq.decoder.load_state_dict(ckpt.load_tensors(e2e_dir / "decoder.safetensors"))
        matcher = (
            load_model(run / "matcher", "matcher")
            if (run / "matcher" / "config.json").exists()
            else None
        )
        return cls(tok, vq, gen, matcher, device, end_to_end)

    # ------------------------------------------------------------------ text -> image

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tok.encode(text, strict=True)
        limit = self.gen.cfg.text_len - 1
        if len(ids) > limit:
            raise PromptError(f"prompt is {len(ids)} tokens long; this model takes at most {limit}")
        return ids

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 4,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        cfg_scale: float = 1.0,
        seed: int = 0,
        rerank: bool = True,
        step_mode: str = "auto",
    ) -> dict:
        """Returns images [P, n, 3, S, S] (reranked best-first when a matcher exists),
        codes [P, n, H*W] and matcher scores [P, n]. step_mode: how each decoding step runs
        (vilg.app.model.stepper: "auto" = a CUDA graph on a GPU, eager on the CPU; "compile")."""
        ids = [self.encode_prompt(p) for p in prompts]
        P, dev, m = len(prompts), self.device, self.gen
        rows = [[self.tok.bos_id] + i for i in ids for _ in range(n)]
        guided = cfg_scale != 1.0
        if guided:
            rows += [[self.tok.bos_id]] * len(rows)
        text, lens = pad(rows, self.tok.pad_id)
        text, lens = text.to(dev), lens.to(dev)
        B, T, N = len(rows), text.shape[1], m.cfg.n_image
        caches = m.new_caches(B, T + N, dev)
        boi = torch.full((B, 1), m.boi, dtype=torch.long, device=dev)
        h = m(T2I, text, boi, lens, caches=caches)[:, T]  # [text | BOI] is all a prefill needs
        codes, hidden = [], []
        half = P * n
        # codes the tokenizer never emits were never targets: never sample them (a large
        # finite value, not -inf, keeps the guidance mix cond - uncond finite)
        banned = ~self.vq.quantizer.live.to(dev)
        stepper = Stepper(m, T2I, T, caches, lens, mode=step_mode)
        for j in range(N):
            if j > 0:
                tok_in = codes[-1].repeat(2) if guided else codes[-1]
                h = stepper(tok_in, T + j)
            hidden.append(h[:half].clone() if self.end_to_end else None)
            logits = m.image_logits(h).float().masked_fill(banned, -1e9)
            c = ops.sample(
                logits[:half],
                uncond=logits[half:] if guided else None,
                cfg_scale=cfg_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                offset=j,
            )
            codes.append(c)
        codes = torch.stack(codes, 1)
        if self.end_to_end:
            Hh, Ww = m.cfg.grid
            z = m.z_head(torch.stack(hidden, 1)).transpose(1, 2).reshape(half, -1, Hh, Ww)
            images = self.vq.decoder(z).clamp(0, 1)
        else:
            images = self.vq.decode_indices(codes.view(half, *m.cfg.grid)).clamp(0, 1)
        scores = torch.zeros(half, device=dev)
        if self.matcher is not None:
            prompt_ids, plens = pad([i for i in ids for _ in range(n)], self.tok.pad_id)
            scores = self.matcher.score(images, prompt_ids.to(dev), plens.to(dev))
        images = images.view(P, n, *images.shape[1:])
        codes, scores = codes.view(P, n, N), scores.view(P, n)
        if rerank and self.matcher is not None:
            order = scores.argsort(dim=1, descending=True)
            images = torch.stack([images[p, order[p]] for p in range(P)])
            codes = torch.stack([codes[p, order[p]] for p in range(P)])
            scores = torch.stack([scores[p, order[p]] for p in range(P)])
        return {"images": images.cpu(), "codes": codes.cpu(), "scores": scores.cpu()}

    # ------------------------------------------------------------------ image -> text

    def load_image(self, path: str | Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such image: {path}")
        try:
            with Image.open(path) as im:
                arr = preprocess(im, self.vq.cfg.image_size)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255

    @torch.no_grad()
    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images.to(self.device)).flatten(1)

    @torch.no_grad()
    def _decode_text(
        self, codes: torch.Tensor, prompt: list[int], beam: int = 1, question: bool = False
    ) -> list[str]:
        """Greedy (beam=1) or beam search text after the image: the continuation of
        [BOS] + prompt (captions), or with question=True the answer to the question `prompt`,
        which sits in the source before the image (the vqa layout)."""
        m, dev = self.gen, self.device
        N, T = m.cfg.n_image, m.cfg.text_len
        prefix = [self.tok.bos_id] + prompt
        if len(prefix) >= T:
            raise PromptError(
                f"question is too long for this model ({len(prefix)} tokens, max {T - 1})"
            )
        B, k = codes.shape[0], beam
        codes = codes.repeat_interleave(k, 0)
        text = torch.tensor([prefix] * (B * k), device=dev)
        caches = m.new_caches(B * k, N + T, dev)
        if question:
            direction, src_len, pos = VQA, len(prefix), len(prefix) + N
            sep = torch.full((B * k, 1), self.tok.sep_id, device=dev)
            h = m(VQA, text, codes, None, caches=caches, answer_ids=sep)[:, -1]
        else:
            direction, src_len, pos = I2T, T, N + len(prefix) - 1
            h = m(I2T, text, codes, None, caches=caches)[:, -1]
        stepper = Stepper(m, direction, src_len, caches)
        out = torch.zeros(B * k, 0, dtype=torch.long, device=dev)
        score = torch.zeros(B, k, device=dev)
        score[:, 1:] = -1e9  # all beams start identical: keep one alive at first
        done = torch.zeros(B * k, dtype=torch.bool, device=dev)
        eos = self.tok.eos_id
        for _ in range(T - len(prefix)):
            logp = m.text_logits(h).float().log_softmax(-1)
            V = logp.shape[-1]
            if k == 1:
                nxt = logp.argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            else:
                # finished beams may only extend with EOS at no cost
                logp = torch.where(done[:, None], torch.full_like(logp, -1e9), logp)
                logp[:, eos] = torch.where(done, torch.zeros_like(logp[:, eos]), logp[:, eos])
                cand = (score.view(-1, 1) + logp).view(B, k * V)
                score, flat = cand.topk(k, dim=1)
                src = (flat // V + torch.arange(B, device=dev)[:, None] * k).view(-1)
                nxt = (flat % V).view(-1)
                out, done = out[src], done[src]
                for kc, vc in caches:
                    kc.copy_(kc[src])
                    vc.copy_(vc[src])
            out = torch.cat([out, nxt[:, None]], 1)
            done = done | (nxt == eos)
            pos += 1
            if bool(done.all()) or pos >= N + T:
                break
            h = stepper(nxt, pos)
        best = out.view(B, k, -1)[:, 0] if k > 1 else out
        return [self.tok.decode(r.tolist()) for r in best]

    def caption(self, images: torch.Tensor, lang: str = "en", beam: int = 1) -> list[str]:
        return self._decode_text(self.image_codes(images), self.tok.lang_prompt(lang), beam)

    def answer(self, images: torch.Tensor, question: str) -> list[str]:
        q = self.tok.encode(question, strict=True)
        return self._decode_text(self.image_codes(images), q, 1, question=True)
