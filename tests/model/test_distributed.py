"""Data-parallel training (DDP / FSDP2) against one process, and sharded checkpoints.

The multi-process tests spawn 2 ranks joined by gloo on 127.0.0.1 (CPU) and train the small
generator of small_trainer.py (the tiny preset's shape: 2 layers, 2 heads, 32 wide) for 6
steps of a 6-image global batch in 2 micro-batches. Tolerance: 1e-5 absolute on the losses
and the weights; the ranks sum their gradients in another order than one process does
(measured differences ~1e-6).
"""

import json
import shutil

import numpy as np
import pytest
import torch
from dist_workers import TRAIN, train_generator
from small_trainer import gen_trainer, make_small_data
from spawn_ranks import run_ranks

from vilg.app.cli import main
from vilg.app.train import checkpoint as ckpt
from vilg.app.train import distributed as D

TOL = 1e-5


def test_rows_split_every_row_once_over_the_ranks():
    for n in (1, 2, 5, 12):
        for world in (1, 2, 3):
            got = [
                i for r in range(world) for i in range(n)[D.rows(n, D.DistInfo("ddp", r, world, r))]
            ]
            assert got == list(range(n))


def test_rank_shares_add_up_to_the_one_process_loss_and_gradient(small_data, tmp_path):
    tr = gen_trainer(small_data, tmp_path, dropout=0.0, train={"batch_size": 5})
    tr.model.zero_grad()
    loss, logs, _ = tr.loss(2, 0)
    loss.backward()
    want = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    total, summed = 0.0, {}
    for rank in range(2):  # uneven: 5 t2i rows -> 3 + 2, 3 caption rows -> 2 + 1, ...
        tr.dist = D.DistInfo("ddp", rank, 2, rank)
        tr.model.zero_grad()
        share, share_logs, _ = tr.loss(2, 0)
        share.backward()
        total += share.item()
        for k, v in share_logs.items():
            summed[k] = summed.get(k, 0.0) + float(v)
        for n, p in tr.model.named_parameters():
            want[n] -= p.grad
    assert abs(total - loss.item()) < TOL
    assert all(abs(summed[k] - float(v)) < TOL for k, v in logs.items())
    assert max(float(g.abs().max()) for g in want.values()) < TOL
    tr.dist = D.DistInfo("fsdp", 0, 8, 0)  # 3 caption rows cannot feed 8 ranks
    with pytest.raises(ValueError, match="cannot be split over 8 ranks"):
        tr.loss(2, 0)


def test_distributed_training_needs_a_launcher(monkeypatch, capsys, tmp_path):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path), "--distributed", "ddp"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path), "--cpu-offload"]) == 2
    assert "--distributed fsdp" in capsys.readouterr().err
    with pytest.raises(ValueError, match="CPU offload is an FSDP option"):
        D.init("ddp", cpu_offload=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            D.init("fsdp", cpu_offload=True)
    # a stage whose loss is not split into rank shares would be counted world times over
    from vilg.app.train.trainer import TrainConfig, Trainer

    with pytest.raises(ValueError, match="trains in one process"):
        Trainer(torch.nn.Linear(2, 2), TrainConfig(), tmp_path, dist=D.DistInfo("ddp", 0, 2, 0))


# ------------------------------------------------------------------ 2 processes (slow)


def _losses(out, step):
    return json.loads((out / f"losses-{step}.json").read_text())


def _one_process(tok, out, **fit):
    tr = gen_trainer(make_small_data(tok), out, dropout=0.0, train=TRAIN)
    losses = []
    tr.after_step = lambda step: losses.append(dict(tr.last_logs))
    tr.fit(**fit)
    return tr, losses


def _close(a: dict, b: dict, tol=TOL) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < tol, worst
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tokenizer every process shares, one process's run and 2-rank FSDP's."""
    root = tmp_path_factory.mktemp("dist")
    tok = root / "tok.json"
    make_small_data(tok)
    one, losses = _one_process(tok, root / "one")
    run_ranks(train_generator, 2, "fsdp", tok, root / "fsdp")
    return root, tok, one, losses


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(runs, mode):
    root, tok, one, losses = runs
    if mode == "ddp":
        run_ranks(train_generator, 2, "ddp", tok, root / "ddp")
    got = _losses(root / mode, 6)
    assert len(got) == len(losses) == 6
    for a, b in zip(got, losses):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < TOL for k in a), (a, b)
    _close(ckpt.load_tensors(root / mode / "model.safetensors"), one.model.state_dict())
    # the sharded checkpoint holds the weights the export gathered
    state = json.loads((root / mode / "checkpoints" / "ckpt-00000006" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 6


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_two_ranks_and_on_one(runs):
    root, tok, _, _ = runs
    killed = root / "killed"
    run_ranks(train_generator, 2, "fsdp", tok, killed, 3)  # "killed" after step 3
    assert (killed / "checkpoints" / "ckpt-00000003" / ".metadata").exists()
    shutil.copytree(killed, root / "killed-1")
    # on 2 ranks: the same sums in the same order, so the same bits
    run_ranks(train_generator, 2, "fsdp", tok, killed)
    full = ckpt.load_tensors(root / "fsdp" / "model.safetensors")
    resumed = ckpt.load_tensors(killed / "model.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert _losses(killed, 6) == _losses(root / "fsdp", 6)[3:]
    # on 1 process (no process group): the shards are stitched back together; from there
    # the gradient sums run in one process's order (tolerance as above)
    torch.manual_seed(7)
    np.random.seed(7)
    one, losses = _one_process(tok, root / "killed-1")
    assert one.step == 6 and len(losses) == 3
    _close(full, one.model.state_dict())
    # and the optimizer state came along: a fresh optimizer would have diverged further
    assert one.opt.state_dict()["state"][0]["step"] == 6


@pytest.mark.slow
def test_torchrun_trains_a_tiny_run_with_fsdp(tmp_path):
    """The command line end to end: rank 0 trains the small stages, both ranks the generator."""
    import os
    import subprocess
    import sys

    from vilg.app.train.distributed import free_port

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "vilg", "--threads", "1", "train", "--preset", "tiny", "--out", str(out),
           "--distributed", "fsdp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    gen = out / "generator"
    assert (gen / "model.safetensors").exists()
    assert (gen / "checkpoints" / "ckpt-00000010" / ".metadata").exists()
    assert (
        json.loads((gen / "checkpoints" / "ckpt-00000010" / "state.json").read_text())["world_size"]
        == 2
    )
    assert (out / "tokenizer" / "model.safetensors").exists() and (out / "matcher").is_dir()


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_fsdp_ranks(runs):
    """The other way: saved by one process (safetensors), resumed on 2 FSDP ranks, which
    shard the full weights and optimizer moments (without the moments Adam's next steps
    would differ far beyond the tolerance)."""
    root, tok, one, losses = runs
    out = root / "from-one"
    _one_process(tok, out, stop_at=3)
    assert (out / "checkpoints" / "ckpt-00000003" / "optimizer.safetensors").exists()
    run_ranks(train_generator, 2, "fsdp", tok, out)
    got = _losses(out, 6)
    assert len(got) == 3
    for a, b in zip(got, losses[3:]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < TOL for k in a), (a, b)
    _close(ckpt.load_tensors(out / "model.safetensors"), one.model.state_dict())
