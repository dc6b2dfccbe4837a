import pytest

from vilg.app.data.prompts import corpus_text
from vilg.app.data.text_tokenizer import PromptError, TextTokenizer


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(corpus_text(0, 300))


def test_round_trip_both_languages(tok):
    for s in corpus_text(9, 100):
        assert tok.decode(tok.encode(s, strict=True)) == s


def test_chinese_is_one_token_per_character(tok):
    ids = tok.encode("左上方有一个大的红色圆形")
    assert len(ids) == 12 and tok.unk_id not in ids


def test_full_width_punctuation_is_folded(tok):
    half = "左上方有一个大的红色圆形,中间有一个小的蓝色正方形"
    assert tok.encode(half.replace(",", "，"), strict=True) == tok.encode(half, strict=True)
    assert tok.encode("有几个物体？", strict=True) == tok.encode("有几个物体?", strict=True)


def test_unknown_words_and_empty_prompts_are_reported(tok):
    with pytest.raises(PromptError, match="zebra"):
        tok.encode("a red zebra at the top", strict=True)
    with pytest.raises(PromptError):
        tok.encode("   ", strict=True)


def test_save_load_identical(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    tok2 = TextTokenizer.load(tmp_path / "t.json")
    s = "what color is the circle at the top left?"
    assert tok2.encode(s) == tok.encode(s) and tok2.vocab_size == tok.vocab_size
    assert tok2.lang_prompt("zh") == tok.lang_prompt("zh") != tok.lang_prompt("en")
