import numpy as np
import torch

from vilg.app.data.shapes import caption, sample_scene
from vilg.app.model.matcher import Matcher, MatcherConfig
from vilg.app.train.stages import perturb_caption


def test_hard_negatives_change_exactly_one_attribute():
    rng = np.random.default_rng(0)
    for i in range(200):
        s = sample_scene("train", 0, i)[0]
        neg = perturb_caption(s, "en", rng)
        assert neg != caption(s, "en")
        a, b = caption(s, "en").split(" and "), neg.split(" and ")
        assert len(a) == len(b)
        words_a = [w for part in a for w in part.split()]
        words_b = [w for part in b for w in part.split()]
        assert sorted(words_a) != sorted(words_b) or a != b


def test_matcher_loss_and_scores():
    torch.manual_seed(0)
    m = Matcher(
        MatcherConfig(
            image_size=48, text_vocab=50, text_len=12, dim=16, embed_dim=16, text_layers=1, heads=2
        )
    )
    x = torch.rand(4, 3, 48, 48)
    ids = torch.randint(5, 50, (4, 10))
    lens = torch.tensor([10, 7, 5, 3])
    loss, acc = m.loss(x, ids, lens, ids.flip(0), lens.flip(0))
    loss.backward()
    assert loss.item() > 0 and 0 <= float(acc) <= 1
    s = m.score(x, ids, lens)
    assert s.shape == (4,) and (s.abs() <= 1 + 1e-5).all()
    ids2 = ids.clone()
    ids2[3, 3:] = 0  # padding beyond the length must not change the embedding
    assert torch.allclose(m.embed_text(ids, lens)[3], m.embed_text(ids2, lens)[3], atol=1e-5)
