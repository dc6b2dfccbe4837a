"""The GPU recipe's training path (autocast, fp16 loss scaling, activation checkpointing) run on
CPU, where torch autocasts to bf16 / fp16 too: it feeds half-precision activations through the
sparse-attention op and the trainers exactly as on a GPU."""

import pytest
import torch
from small_trainer import gen_trainer

from vilg.app.train.trainer import TrainConfig, resolve_precision

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _trainer(small_data, out, end_to_end, **train):
    return gen_trainer(small_data, out, end_to_end, dropout=0.0, train={"steps": 6, **train})


@pytest.mark.parametrize("end_to_end", [False, True], ids=["generator", "end2end"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_loss_and_gradients_follow_fp32(small_data, tmp_path, precision, end_to_end):
    tr = _trainer(small_data, tmp_path, end_to_end)
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def step0(dtype):
        tr.model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _, _ = tr.loss(0, 0)
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        return loss.detach().double(), g.double()

    ref_loss, ref_g = step0(None)
    loss, g = step0(HALF[precision])
    tol = 3e-2 if precision == "bf16" else 1e-2
    assert torch.isfinite(loss) and abs(loss - ref_loss) <= tol * ref_loss
    # half-precision rounding only, not a wrong or missing gradient term (measured: cosine
    # > 0.99999, norms within 0.2%)
    cos = torch.nn.functional.cosine_similarity(g, ref_g, dim=0).item()
    norm_ratio = (torch.linalg.vector_norm(g) / torch.linalg.vector_norm(ref_g)).item()
    assert cos > 0.99 and abs(norm_ratio - 1) < 0.1


@pytest.mark.parametrize("end_to_end", [False, True], ids=["generator", "end2end"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_with_checkpointing_trains_and_resumes(
    small_data, tmp_path, precision, end_to_end
):
    cfg = {"precision": precision, "grad_checkpointing": True}
    full = _trainer(small_data, tmp_path / "full", end_to_end, **cfg)
    before = {k: v.clone() for k, v in full.model.state_dict().items()}
    full.fit()
    after = full.model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # master weights stay fp32
    assert any(not torch.equal(v, before[k]) for k, v in after.items())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert all(v == v for v in full.evaluate().values() if isinstance(v, float))  # no NaN

    killed = _trainer(small_data, tmp_path / "killed", end_to_end, **cfg)
    killed.fit(stop_at=3)
    resumed = _trainer(small_data, tmp_path / "killed", end_to_end, **cfg)
    resumed.fit()
    if precision == "fp16":
        assert resumed.scaler.get_scale() == full.scaler.get_scale()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_auto_precision_is_fp32_on_cpu_and_explicit_half_is_kept(small_data, tmp_path):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    tr = _trainer(small_data, tmp_path, False, precision="auto")
    assert tr.amp_dtype is None and not tr.scaler.is_enabled()
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="half")
