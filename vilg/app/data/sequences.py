"""Turn (image tokens, text) pairs into the generator's training batches.

Each stream pads its text only to the longest text in the batch (shorter sequences,
less compute); the layouts are cached per text length by the model.
"""

from __future__ import annotations

import torch

from vilg.app.data.text_tokenizer import TextTokenizer


def pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def t2i_batch(
    tok: TextTokenizer,
    texts: list[list[int]],
    images: torch.Tensor,
    boi: int,
    drop: torch.Tensor | None = None,
) -> dict:
    """texts: token ids (no specials); images [B, N] code ids; drop [B] bool = caption dropout
    (text reduced to [BOS] alone: the unconditional prompt used for classifier-free guidance).
    """
    seqs = [
        [tok.bos_id] + ([] if drop is not None and bool(drop[i]) else t)
        for i, t in enumerate(texts)
    ]
    text, lens = pad(seqs, tok.pad_id)
    img_in = torch.cat([torch.full_like(images[:, :1], boi), images[:, :-1]], dim=1)
    return {"text": text, "text_lens": lens, "image_in": img_in, "target": images}


def i2t_batch(
    tok: TextTokenizer, prompts: list[list[int]], answers: list[list[int]], images: torch.Tensor
) -> dict:
    """Sequence [BOS] prompt answer [EOS]; loss only on answer + EOS.

    Captioning: prompt = the language tag.
    """
    full = [[tok.bos_id] + p + a + [tok.eos_id] for p, a in zip(prompts, answers)]
    inp, lens = pad([s[:-1] for s in full], tok.pad_id)
    tgt, _ = pad([s[1:] for s in full], tok.pad_id)
    mask = torch.zeros_like(tgt, dtype=torch.bool)
    for i, p in enumerate(prompts):
        mask[i, len(p) : lens[i]] = True
    return {"text": inp, "text_lens": lens, "image": images, "target": tgt, "mask": mask}


def vqa_batch(
    tok: TextTokenizer, questions: list[list[int]], answers: list[list[int]], images: torch.Tensor
) -> dict:
    """Question in the source: [BOS] question (padded, question_lens) | image | [SEP] answer,
    predicting answer + [EOS]; the loss mask covers the answer segment's real positions."""
    question, qlens = pad([[tok.bos_id] + q for q in questions], tok.pad_id)
    answer_in, alens = pad([[tok.sep_id] + a for a in answers], tok.pad_id)
    target, _ = pad([a + [tok.eos_id] for a in answers], tok.pad_id)
    mask = torch.arange(target.shape[1])[None, :] < alens[:, None]
    return {
        "question": question,
        "question_lens": qlens,
        "image": images,
        "answer_in": answer_in,
        "target": target,
        "mask": mask,
    }
