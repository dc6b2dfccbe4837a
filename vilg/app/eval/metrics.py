"""Caption metrics, written here (no Java / pycocoevalcap dependency).

- Tokenisation: lower-case; every CJK character is a token; other text splits on whitespace
  with punctuation removed.
- BLEU-4: corpus-level, as in the COCO caption toolkit: clipped n-gram precisions summed over
  the corpus, geometric mean of n = 1..4, brevity penalty from the reference length closest
  to each hypothesis length.
- CIDEr-D: as defined by Vedantam et al. 2015 and the COCO toolkit: tf-idf weighted n-gram
  vectors (n = 1..4, idf from the references of the evaluated set), hypothesis counts clipped
  by reference counts, Gaussian length penalty (sigma 6), mean over references, times 10.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter


def tokenize(text: str) -> list[str]:
    out, word = [], ""
    for ch in text.lower():
        cjk = "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"
        if ch.isspace() or cjk or unicodedata.category(ch).startswith("P"):
            if word:
                out.append(word)
            word = ""
            if cjk:
                out.append(ch)
        else:
            word += ch
    if word:
        out.append(word)
    return out


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def bleu4(hyps: list[str], refs: list[list[str]]) -> float:
    """Corpus BLEU-4. hyps[i] is scored against the list refs[i]."""
    if len(hyps) != len(refs):
        raise ValueError("hyps and refs must have the same length")
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs):
        ht = tokenize(h)
        rts = [tokenize(r) for r in rs]
        hyp_len += len(ht)
        ref_len += min((abs(len(r) - len(ht)), len(r)) for r in rts)[1]
        for n in range(1, 5):
            hc = _ngrams(ht, n)
            maxref = Counter()
            for r in rts:
                maxref |= _ngrams(r, n)
            match[n - 1] += sum(min(c, maxref[g]) for g, c in hc.items())
            total[n - 1] += max(len(ht) - n + 1, 0)
    if min(match) == 0:
        return 0.0
    logp = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / max(hyp_len, 1))
    return bp * math.exp(logp)


def cider_d(hyps: list[str], refs: list[list[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (mean of per-image scores)."""
    if len(hyps) != len(refs):
        raise ValueError("hyps and refs must have the same length")
    if not hyps:
        return 0.0
    ref_toks = [[tokenize(r) for r in rs] for rs in refs]
    df = Counter()
    for rts in ref_toks:
        seen = set()
        for r in rts:
            for n in range(1, 5):
                seen |= set(_ngrams(r, n))
        df.update(seen)
    log_n = math.log(float(len(hyps)))

    def vec(toks):
        vs, norms = [], []
        for n in range(1, 5):
            c = _ngrams(toks, n)
            v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in c.items()}
            vs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vs, norms

    scores = []
    for h, rts in zip(hyps, ref_toks):
        ht = tokenize(h)
        hv, hn = vec(ht)
        acc = [0.0] * 4
        for r in rts:
            rv, rn = vec(r)
            delta = len(ht) - len(r)
            for n in range(4):
                dot = sum(min(x, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, x in hv[n].items())
                if hn[n] and rn[n]:
                    acc[n] += dot / (hn[n] * rn[n]) * math.exp(-delta * delta / (2 * sigma**2))
        scores.append(sum(a / len(rts) for a in acc) / 4 * 10.0)
    return sum(scores) / len(scores)
