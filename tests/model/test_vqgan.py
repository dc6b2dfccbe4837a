import torch

from vilg.model.vqgan import VQGAN, VQConfig, code_stats


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
    import pytest

    with pytest.raises(ValueError):
        VQConfig(image_size=50, patch=16, channels=(32,))
    with pytest.raises(ValueError):
        VQConfig(codebook_mode="kmeans")
