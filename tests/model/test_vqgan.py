import pytest
import torch

from vilg.app.model.vqgan import VQGAN, VQConfig, code_stats


def _model(**kw):
    torch.manual_seed(0)
    return VQGAN(
        VQConfig(image_size=48, patch=16, channels=(32,), codebook_size=16, code_dim=8, **kw)
    )


def test_quantizer_picks_nearest_code_and_straight_through_grads():
    m = _model()
    x = torch.rand(4, 3, 48, 48)
    xr, idx, qloss, _ = m(x)
    assert xr.shape == x.shape and idx.shape == (4, 3, 3)
    z = m.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
    brute = torch.cdist(z, m.quantizer.codebook.detach()).argmin(1)
    assert torch.equal(m.encode(x).reshape(-1), brute)
    (m.recon_loss(x, xr)["recon"] + qloss).backward()
    assert m.encoder.net[1].weight.grad.abs().sum() > 0  # gradient passed the quantizer


def test_kmeans_init_and_dead_code_restart():
    m = _model(dead_after=0.5)
    x = torch.rand(8, 3, 48, 48)
    assert not bool(m.quantizer.initialised)
    m(x)
    assert bool(m.quantizer.initialised)
    q = m.quantizer
    q.usage[:] = 0.0  # every code looks dead -> all restarted on current encoder outputs
    before = q.codebook.detach().clone()
    m(x)
    assert not torch.equal(before, q.codebook.detach())
    assert (q.usage >= 0.5).all()


def test_l2_mode_and_decode_roundtrip_shapes():
    m = _model(codebook_mode="l2")
    x = torch.rand(2, 3, 48, 48)
    idx = m.encode(x)
    assert m.decode_indices(idx).shape == (2, 3, 48, 48)
    s = code_stats(idx, 16)
    assert 1 <= s["codes_used"] <= 16 and s["perplexity"] >= 1


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        VQConfig(image_size=50, patch=16, channels=(32,))
    with pytest.raises(ValueError):
        VQConfig(codebook_mode="kmeans")


def test_keep_used_restricts_inference_to_the_used_codes():
    m = _model().eval()
    x = torch.rand(6, 3, 48, 48)
    z = m.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8).double()
    book = m.quantizer.codebook.detach().double()
    counts = torch.zeros(16, dtype=torch.long)
    counts[torch.tensor([1, 4, 5, 9, 14])] = 3
    m.quantizer.keep_used(counts)
    live = counts.nonzero().squeeze(1)
    want = live[torch.cdist(z, book[live]).argmin(1)]  # float64 reference over the live codes
    assert torch.equal(m.encode(x).reshape(-1), want)
    assert not torch.equal(want, torch.cdist(z, book).argmin(1))  # the restriction mattered
    m.train()  # training still sees every code (dead-code restarts need them)
    m.quantizer.initialised.fill_(True)
    _, idx, _, _ = m(x)
    assert set(idx.unique().tolist()) - set(live.tolist())
    with pytest.raises(ValueError, match="no code"):
        m.quantizer.keep_used(torch.zeros(16))


def test_tokenizer_checkpoint_without_live_codes_loads_with_all_live(tmp_path):
    from vilg.app.train import checkpoint as ckpt

    m = _model()
    m.quantizer.live[3] = False
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("quantizer.live")}
    ckpt.save_tensors(tmp_path / "old.safetensors", state)
    fresh = _model()
    ckpt.load_model_state(fresh, tmp_path / "old.safetensors")
    assert bool(fresh.quantizer.live.all())
    state.pop("quantizer.codebook")  # anything else missing is still an error
    ckpt.save_tensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(ckpt.CheckpointError, match="codebook"):
        ckpt.load_model_state(fresh, tmp_path / "bad.safetensors")


def test_trained_tokenizer_keeps_exactly_the_codes_of_its_training_images(tiny_run):
    import numpy as np

    from vilg.app.data.pool import shapes_pool
    from vilg.app.generate import load_model
    from vilg.app.train.presets import get_preset

    m = load_model(tiny_run / "tokenizer", "vqgan").eval()
    d = get_preset("tiny")["data"]
    pool = shapes_pool("train", d["train_size"], 0, d["image_size"])
    codes = m.encode(pool.image_tensor(np.arange(len(pool))))
    live = m.quantizer.live
    assert not bool(live.all())  # the tiny run leaves spare codes
    assert torch.equal(torch.bincount(codes.flatten(), minlength=len(live)) > 0, live)
