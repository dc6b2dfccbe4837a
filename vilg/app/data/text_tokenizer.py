"""Text tokenizer: a WordPiece model (HF `tokenizers`) trained on the corpus.

The BERT normalizer splits every CJK character into its own word, so Chinese is handled
character by character (as in ERNIE / BERT-Chinese) and English by whole words / pieces.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS, SEP = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]"
LANG_TAGS = {"en": "[EN]", "zh": "[ZH]"}  # asks the captioner for a language
SPECIALS = [PAD, UNK, BOS, EOS, SEP, *LANG_TAGS.values()]


class PromptError(ValueError):
    """A prompt the model cannot take (unknown words, too long, empty)."""


def _is_cjk(ch: str) -> bool:
    return len(ch) == 1 and ("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")


def _is_punct(tok: str) -> bool:
    return len(tok) == 1 and unicodedata.category(tok).startswith("P")


class TextTokenizer:
    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.sep_id = (
            tok.token_to_id(s) for s in SPECIALS[:5]
        )
        self.lang_ids = {k: tok.token_to_id(v) for k, v in LANG_TAGS.items()}
        self.special_ids = {tok.token_to_id(s) for s in SPECIALS}

    @classmethod
    def train(cls, corpus: list[str], vocab_size: int = 1000) -> TextTokenizer:
        tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
        # NFKC folds full-width punctuation ("，" "？", what Chinese keyboards type) into the
        # corpus's ASCII forms; BertNormalizer then puts spaces around CJK characters: one
        # token per Chinese character.
        tok.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.BertNormalizer(
                    clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
                ),
            ]
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1, show_progress=False
        )
        tok.train_from_iterator(corpus, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    def to_str(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_str(cls, s: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(s))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, strict: bool = False) -> list[int]:
        """Token ids (no specials). strict=True raises PromptError on unknown words."""
        enc = self.tok.encode(text, add_special_tokens=False)
        if strict:
            if not enc.ids:
                raise PromptError("empty prompt")
            unknown = [text[a:b] for (a, b), i in zip(enc.offsets, enc.ids) if i == self.unk_id]
            if unknown:
                raise PromptError(f"unknown word(s) for this model's vocabulary: {unknown}")
        return enc.ids

    def lang_prompt(self, lang: str) -> list[int]:
        """Prompt that asks image->text for a caption in `lang` ("raw": untagged user text)."""
        return [self.lang_ids[lang]] if lang in self.lang_ids else []

    def decode(self, ids) -> str:
        """Inverse of encode on this corpus: no spaces around CJK characters or punctuation."""
        out = ""
        prev = None
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in self.special_ids:
                continue
            t = self.tok.id_to_token(i)
            if t is None:
                continue
            if t.startswith("##"):
                out += t[2:]
            elif (
                prev is None or _is_punct(t) or prev == "-" or _is_cjk(t[0]) or _is_cjk(prev[-1])
            ):  # "top-left": no space after a hyphen either
                out += t
            else:
                out += " " + t
            prev = t
        return out
