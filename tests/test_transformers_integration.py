"""transformers models built from configs (random weights) on vilg attention: logits and
gradients against the same model on sdpa / eager (float64) under the same mask."""

import copy

import pytest
import torch
from reference import rel_err
from torch._dynamo.testing import CompileCounterWithBackend

transformers = pytest.importorskip("transformers")

import vilg.integrations.transformers as vt  # noqa: E402
from vilg.layouts import causal, neighborhood_2d, sliding_window  # noqa: E402

# The one capability check for the kernels' score modifiers and left padding (key_starts).

V = 97


def _lm_config(cls, **kw):
    return cls(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **kw,
    )


def _pair(config, impl, auto=transformers.AutoModelForCausalLM):
    """The model on `impl` (float32) and the same weights on sdpa in float64. Each model gets
    its own config copy: from_config records the implementation in the config it is given."""
    torch.manual_seed(0)
    model = auto.from_config(copy.deepcopy(config), attn_implementation=impl)
    ref = auto.from_config(copy.deepcopy(config), attn_implementation="sdpa").double()
    ref.load_state_dict(model.state_dict())
    return model, ref


class _Count(torch.overrides.TorchFunctionMode):
    """Records calls of one op (here: vilg's attention kernel) while active."""

    def __init__(self, op, calls):
        super().__init__()
        self.op, self.calls = op, calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is self.op or getattr(func, "_overloadpacket", None) is getattr(
            self.op, "_overloadpacket", 0
        ):
            self.calls.append(func)
        return func(*args, **(kwargs or {}))


def _grads(model):
    return torch.cat([p.grad.flatten().double() for p in model.parameters()])


def _compare(model, ref, inputs, ref_inputs, tol=1e-5):
    calls = []
    hook = torch.ops.vilg.sparse_attention_fwd.default
    with _Count(hook, calls):
        out = model(**inputs).logits
    assert len(calls) >= model.config.num_hidden_layers  # every layer ran on vilg kernels
    want = ref(**ref_inputs).logits
    assert rel_err(out, want) < tol
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    assert rel_err(_grads(model), _grads(ref)) < 10 * tol


def test_llama_causal_gqa_with_padding():
    vt.register("vilg_causal", layout_fn=lambda n: causal(n, block_size=16))
    model, ref = _pair(_lm_config(transformers.LlamaConfig), "vilg_causal")
    ids = torch.randint(0, V, (2, 45), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, 45, dtype=torch.long)
    am[1, 30:] = 0  # right padding
    _compare(
        model, ref, dict(input_ids=ids, attention_mask=am), dict(input_ids=ids, attention_mask=am)
    )


def test_mistral_sliding_window():
    w = 8
    vt.register("vilg_sliding", layout_fn=lambda n: sliding_window(n, w, block_size=16))
    cfg = _lm_config(transformers.MistralConfig, sliding_window=w)
    model, ref = _pair(cfg, "vilg_sliding")
    ids = torch.randint(0, V, (2, 50), generator=torch.Generator().manual_seed(2))
    _compare(model, ref, dict(input_ids=ids), dict(input_ids=ids))
    # the layout is what decides: plain causal attention gives other logits than the window
    vt.register("vilg_wrong", layout_fn=lambda n: causal(n, block_size=16))
    wrong, _ = _pair(cfg, "vilg_wrong")
    assert rel_err(wrong(input_ids=ids).logits, ref(input_ids=ids).logits) > 1e-3


def _masked_sdpa(mask):
    """Reference attention function: torch sdpa with an explicit dense mask (k/v repeated)."""

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.to(q.device), scale=scaling
        )
        return out.transpose(1, 2), None

    return attention


def test_vit_neighborhood_with_cls_prefix():
    grid, window = (12, 12), 5
    lay = neighborhood_2d(grid, window, prefix=1, block_size=16)  # CLS first, sees all
    vt.register("vilg_vit", layout_fn=lay)
    transformers.AttentionInterface.register("ref_vit", _masked_sdpa(lay.dense_mask()))
    cfg = transformers.ViTConfig(
        image_size=48, patch_size=4, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=96, num_labels=5,
    )  # fmt: skip
    auto = transformers.AutoModelForImageClassification
    torch.manual_seed(0)
    model = auto.from_config(copy.deepcopy(cfg), attn_implementation="vilg_vit")
    ref = auto.from_config(copy.deepcopy(cfg), attn_implementation="ref_vit").double()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    _compare(model, ref, dict(pixel_values=x), dict(pixel_values=x.double()))
    full = auto.from_config(copy.deepcopy(cfg), attn_implementation="sdpa")
    full.load_state_dict(model.state_dict())
    assert rel_err(full(pixel_values=x).logits, model(pixel_values=x).logits) > 1e-3


@pytest.mark.slow  # dynamo traces the whole transformers model: ~10-20 s on 2 cores
def test_compile_fullgraph_llama_no_recompile_on_batch():
    fn = vt.register("vilg_compiled", layout_fn=lambda n: causal(n, block_size=16))
    torch.manual_seed(0)
    cfg = _lm_config(transformers.LlamaConfig)
    cfg.num_hidden_layers = 1  # tracing time grows with depth; one layer shows the route
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="vilg_compiled")
    fn.layouts.get(40)  # layouts are built eagerly, before compiling
    cc = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=cc, fullgraph=True)
    for B in (2, 3):
        ids = torch.randint(0, V, (B, 40), generator=torch.Generator().manual_seed(B))
        torch._dynamo.mark_dynamic(ids, 0)
        out = compiled(input_ids=ids).logits
        out.square().mean().backward()
        got = _grads(model)
        model.zero_grad()
        want = model(input_ids=ids).logits
        want.square().mean().backward()
        assert rel_err(out, want) < 1e-5 and rel_err(got, _grads(model)) < 1e-5
        model.zero_grad()
    assert cc.frame_count == 1


def test_errors():
    fn = vt.make_attention_function(lambda n: causal(n, block_size=16))
    q = torch.randn(2, 4, 20, 8)
    k = torch.randn(2, 2, 20, 8)
    with pytest.raises(ValueError, match="dropout"):
        fn(None, q, k, k, None, dropout=0.1)
    gappy = torch.ones(2, 20, dtype=torch.long)
    gappy[0, 5:7] = 0
    with pytest.raises(ValueError, match="contiguous run"):
        fn(None, q, k, k, gappy)
    left = torch.ones(2, 20, dtype=torch.long)
    left[0, :3] = 0
    with pytest.raises(ValueError, match="2-D"):
        fn(None, q, k, k, torch.ones(2, 1, 20, 20, dtype=torch.bool))
    with pytest.raises(ValueError, match="at most as many queries as keys"):
        fn(None, torch.randn(2, 4, 21, 8), k, k, None)
    bidir = vt.make_attention_function(lambda n: sliding_window(n, 5, causal=False))
    with pytest.raises(ValueError, match="defined only for causal patterns"):
        bidir(None, q[:, :, :4], k, k, None)
    with pytest.raises(ValueError, match="layout_fn"):
        vt.register("vilg_none")


@pytest.mark.parametrize("w", [None, 8])
def test_chunked_prefill_with_kv_cache(w):
    """Prefill in two chunks through transformers' KV cache: the second chunk's queries attend
    the cached keys (a rectangular layout); logits equal the one-pass forward, and the float64
    sdpa model's."""
    if w is None:
        vt.register("vilg_chunk_causal", layout_fn=lambda n: causal(n, block_size=16))
        cfg, impl = _lm_config(transformers.LlamaConfig), "vilg_chunk_causal"
    else:
        vt.register("vilg_chunk_window", layout_fn=lambda n: sliding_window(n, w, block_size=16))
        cfg, impl = _lm_config(transformers.MistralConfig, sliding_window=w), "vilg_chunk_window"
    model, ref = _pair(cfg, impl)
    ids = torch.randint(0, V, (2, 53), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
        first = model(input_ids=ids[:, :30], use_cache=True)
        second = model(input_ids=ids[:, 30:], past_key_values=first.past_key_values).logits
    assert rel_err(torch.cat([first.logits, second], 1), want) < 1e-5
    assert rel_err(second, whole[:, 30:]) < 1e-5


def _pair_eager(config, impl, auto=transformers.AutoModelForCausalLM):
    """The model on `impl` (float32) and the same weights on eager attention in float64 (eager
    keeps fully masked rows finite, where sdpa's could be NaN, and it soft-caps)."""
    torch.manual_seed(0)
    model = auto.from_config(copy.deepcopy(config), attn_implementation=impl)
    ref = auto.from_config(copy.deepcopy(config), attn_implementation="eager").double()
    ref.load_state_dict(model.state_dict())
    return model, ref


def _compare_real(model, ref, ids, am, tol=1e-5):
    """Logits and gradients at the real (unpadded) positions only: a padded query's row is
    undefined (vilg gives 0, eager a uniform average)."""
    out = model(input_ids=ids, attention_mask=am).logits
    want = ref(input_ids=ids, attention_mask=am).logits
    real = am.bool()
    assert rel_err(out[real], want[real]) < tol
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)) * real[..., None]
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    assert rel_err(_grads(model), _grads(ref)) < 10 * tol


def test_llama_left_padding():
    """Left, right and both-sided padding against each sample run alone with no padding (RoPE
    scores depend on relative positions only, so a shifted sample gives the same logits)."""
    vt.register("vilg_left", layout_fn=lambda n: causal(n, block_size=16))
    model, ref = _pair(_lm_config(transformers.LlamaConfig), "vilg_left")
    ids = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(5))
    am = torch.ones(3, 40, dtype=torch.long)
    am[0, :12] = 0  # left padding
    am[1, 33:] = 0  # right padding
    am[2, :4], am[2, 36:] = 0, 0  # both
    out = model(input_ids=ids, attention_mask=am).logits
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * g * am[..., None]).sum().backward()
    for b in range(3):
        real = am[b].bool()
        want = ref(input_ids=ids[b : b + 1, real]).logits[0]
        assert rel_err(out[b, real], want) < 1e-5
        (want * g[b, real].double()).sum().backward()
    assert rel_err(_grads(model), _grads(ref)) < 1e-4


def test_gemma2_softcap():
    """Gemma 2 soft-caps its attention scores (attn_logit_softcapping, passed as `softcap`)."""
    vt.register("vilg_gemma", layout_fn=lambda n: causal(n, block_size=16))
    cfg = transformers.Gemma2Config(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=256, attn_logit_softcapping=1.0, initializer_range=0.2,
        layer_types=["full_attention", "full_attention"],
    )  # fmt: skip
    model, ref = _pair_eager(cfg, "vilg_gemma")
    ids = torch.randint(0, V, (2, 45), generator=torch.Generator().manual_seed(7))
    am = torch.ones(2, 45, dtype=torch.long)
    am[1, 30:] = 0
    _compare_real(model, ref, ids, am)
    nocap = copy.deepcopy(cfg)
    nocap.attn_logit_softcapping = None  # the cap changes the logits: it is applied
    off, _ = _pair_eager(nocap, "vilg_gemma")
    assert rel_err(off(input_ids=ids).logits, model(input_ids=ids).logits) > 1e-3


def test_alibi_slopes_keyword():
    """A model that hands `alibi_slopes` to the attention function gets ALiBi."""
    fn = vt.make_attention_function(lambda n: causal(n, block_size=16))
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 4, 30, 8, generator=g) for _ in "qkv")
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    out, _ = fn(None, q, k, v, None, alibi_slopes=slopes)
    i = torch.arange(30)
    bias = -slopes.double()[:, None, None] * (i[:, None] - i[None, :]).abs()
    s = q.double() @ k.double().transpose(-1, -2) / 8**0.5 + bias
    s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    assert rel_err(out.transpose(1, 2), torch.softmax(s, -1) @ v.double()) < 1e-5
