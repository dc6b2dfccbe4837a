import math

from vilg.app.eval.metrics import bleu4, cider_d, tokenize


def test_tokenize_mixes_cjk_and_words():
    assert tokenize("A red circle, 左上方!") == ["a", "red", "circle", "左", "上", "方"]


def test_bleu_identity_and_hand_example():
    assert bleu4(["a b c d e"], [["a b c d e"]]) == 1.0
    # hyp of 6 tokens vs ref of 7: p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, bp = exp(1 - 7/6)
    hyp, ref = "the cat sat on a mat", "the cat sat on the red mat"
    expect = math.exp(1 - 7 / 6) * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert abs(bleu4([hyp], [[ref]]) - expect) < 1e-12
    assert bleu4(["x y"], [["a b c d"]]) == 0.0


def test_cider_prefers_right_captions():
    refs = [
        ["a red circle at the top"],
        ["a blue square at the left"],
        ["a green diamond at the center"],
    ]
    good = cider_d([r[0] for r in refs], refs)
    bad = cider_d(
        ["a red square at the left", "a blue circle at the top", "a green diamond at the center"],
        refs,
    )
    assert good > bad > 0
    assert abs(good - 10.0) < 1e-9  # identical captions: every n-gram cosine is 1
