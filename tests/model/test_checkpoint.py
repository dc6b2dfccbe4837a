import json

import numpy as np
import pytest
import torch
from small_trainer import gen_trainer

from vilg.app.model.vqgan import VQGAN, VQConfig
from vilg.app.train import checkpoint as ckpt
from vilg.app.train.stages import VQTrainer
from vilg.app.train.trainer import TrainConfig


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    ckpt.atomic_write_json(p, {"x": 1})
    ckpt.atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_corrupt_and_mismatched_checkpoints_raise_clear_errors(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load_tensors(tmp_path / "m.safetensors")
    ckpt.save_tensors(tmp_path / "w.safetensors", {"weight": torch.zeros(3, 3)})
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.load_model_state(torch.nn.Linear(4, 4), tmp_path / "w.safetensors")


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_generator_resume_is_bit_exact(small_data, tmp_path):
    full = gen_trainer(small_data, tmp_path / "full")
    full.fit()
    killed = gen_trainer(small_data, tmp_path / "killed")
    killed.fit(stop_at=5)  # "killed" after step 5 (checkpoint at 5)
    torch.manual_seed(999)  # the process that resumes starts from different RNG states
    np.random.seed(5)
    resumed = gen_trainer(small_data, tmp_path / "killed")
    resumed.fit()
    assert resumed.step == 8
    _assert_same(full.model.state_dict(), resumed.model.state_dict())
    fo, ro = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    for pid in fo:
        for k in fo[pid]:
            assert torch.equal(torch.as_tensor(fo[pid][k]), torch.as_tensor(ro[pid][k]))


def test_task_mix_sets_rows_per_stream_and_trains(small_data, tmp_path):
    tr = gen_trainer(small_data, tmp_path / "mix", t2i_frac=0.5, cap_frac=0.5, vqa_frac=2.0)
    idx = np.arange(6)
    t2i, cap, vqa = tr.make_batches(tr.pool, tr.codes, tr.cap_ids, idx, np.random.default_rng(0))
    assert len(t2i["text"]) == 3 and len(cap["text"]) == 3 and len(vqa["question"]) == 12
    # question in the source: [BOS] question | image | [SEP] answer -> answer [EOS]
    tok = tr.tok
    assert (vqa["question"][:, 0] == tok.bos_id).all()
    assert (vqa["answer_in"][:, 0] == tok.sep_id).all()
    n = vqa["mask"].sum(1)
    assert (vqa["target"][torch.arange(12), n - 1] == tok.eos_id).all()
    assert torch.equal(
        vqa["answer_in"][:, 1:][vqa["mask"][:, 1:]],
        vqa["target"][vqa["mask"]][vqa["target"][vqa["mask"]] != tok.eos_id],
    )
    # VQA rows continue after the caption rows, cycling over the batch's images
    want = tr.codes[torch.as_tensor(np.arange(3, 15) % 6)]
    assert torch.equal(vqa["image"], want)
    assert t2i["index"].tolist() == [0, 1, 2]
    tr.fit()
    assert {"tf_image_exact", "tf_caption_exact", "tf_vqa_exact"} <= set(tr.evaluate())
    only_text = gen_trainer(small_data, tmp_path / "i2t", t2i_frac=0.0, vqa_weight=3.0)
    t2i, cap, vqa = only_text.make_batches(
        only_text.pool, only_text.codes, only_text.cap_ids, idx, np.random.default_rng(0)
    )
    assert t2i is None
    r = only_text.stream_losses(t2i, cap, vqa)
    assert r["img"] is None and torch.isfinite(only_text.total(r))
    with pytest.raises(ValueError, match="must be >= 0"):
        gen_trainer(small_data, tmp_path / "bad", vqa_frac=-1.0)


def test_task_mix_schedule_switches_at_its_steps_and_resumes_exactly(small_data, tmp_path):
    # of 8 steps: from step 4 few t2i rows, no captions, many questions; from step 6 captions
    sched = {"schedule": [[0.5, [0.5, 0.0, 2.0]], [0.75, [0.5, 1.0, 1.0]]]}
    tr = gen_trainer(small_data, tmp_path / "late", **sched)
    assert tr.fracs_at(3) == (1.0, 0.5, 0.5) and tr.fracs_at(4) == tr.fracs_at(5) == (0.5, 0, 2)
    assert tr.fracs_at(6) == tr.fracs_at(7) == (0.5, 1.0, 1.0)
    t2i, cap, vqa = tr.make_batches(
        tr.pool, tr.codes, tr.cap_ids, np.arange(6), np.random.default_rng(0), fracs=tr.fracs_at(4)
    )
    assert len(t2i["text"]) == 3 and cap is None and len(vqa["question"]) == 12
    full = gen_trainer(small_data, tmp_path / "full", **sched)
    full.fit()
    killed = gen_trainer(small_data, tmp_path / "killed", **sched)
    killed.fit(stop_at=3)  # killed before the switches, resumed across both
    resumed = gen_trainer(small_data, tmp_path / "killed", **sched)
    resumed.fit()
    _assert_same(full.model.state_dict(), resumed.model.state_dict())
    plain = gen_trainer(small_data, tmp_path / "plain")
    plain.fit()
    assert not torch.equal(plain.model.text_head.weight, full.model.text_head.weight)
    with pytest.raises(ValueError, match="3 stream fractions"):
        gen_trainer(small_data, tmp_path / "bad", schedule=[[0.5, [1.0, 1.0]]])
    for bad in ([[1.5, [1, 1, 1]]], [[0.5, [1, 1, 1]], [0.25, [1, 1, 1]]], [[0.5]]):
        with pytest.raises(ValueError, match="schedule"):
            gen_trainer(small_data, tmp_path / "bad", schedule=bad)


def test_vq_resume_is_bit_exact(small_data, tmp_path):
    train, val, _, _ = small_data

    def make(out):
        torch.manual_seed(3)
        vq = VQGAN(
            VQConfig(
                image_size=48,
                patch=16,
                channels=(32,),
                codebook_size=32,
                code_dim=8,
                dead_after=0.2,
            )
        )
        cfg = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup=1, ckpt_every=0, progress=False)
        return VQTrainer(vq, cfg, out, train, val)

    a = make(tmp_path / "a")
    a.fit()
    make(tmp_path / "b").fit(stop_at=2)
    b = make(tmp_path / "b")
    b.fit()
    _assert_same(a.model.state_dict(), b.model.state_dict())
    assert (tmp_path / "b" / "model.safetensors").exists()
    assert json.loads((tmp_path / "b" / "config.json").read_text())["kind"] == "vqgan"


def test_end_to_end_resume_restores_the_decoder_of_its_checkpoint(small_data, tmp_path):
    """Killed while writing checkpoint 6: the resume starts from 3, decoder included."""

    def make(out, **tasks):
        return gen_trainer(small_data, out, end_to_end=True, **tasks)

    full = make(tmp_path / "full")
    full.fit()
    make(tmp_path / "killed").fit(stop_at=6)
    ck = tmp_path / "killed" / "checkpoints"
    ckpt.atomic_write_json(ck / "latest.json", {"step": 3, "dir": "ckpt-00000003"})
    resumed = make(tmp_path / "killed")
    resumed.fit()
    _assert_same(full.model.state_dict(), resumed.model.state_dict())
    _assert_same(full.vq.decoder.state_dict(), resumed.vq.decoder.state_dict())
    exported = ckpt.load_tensors(tmp_path / "killed" / "decoder.safetensors")
    _assert_same(exported, full.vq.decoder.state_dict())
    # the reconstruction loss needs text->image rows in every phase of the mix
    for tasks in ({"t2i_frac": 0.0}, {"schedule": [[0.5, [0.0, 1.0, 1.0]]]}):
        with pytest.raises(ValueError, match="text->image rows"):
            make(tmp_path / "bad", **tasks)


def test_question_kind_weights_steer_the_vqa_rows(small_data, tmp_path):
    tr = gen_trainer(small_data, tmp_path / "kw", kind_weights={"where": 1, "exists": 3})
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(4):
        _, _, vqa = tr.make_batches(tr.pool, tr.codes, tr.cap_ids, np.arange(8), rng)
        seen += [tr.tok.decode([t for t in q if t != tr.tok.pad_id]) for q in vqa["question"]]
    where = [q for q in seen if q.startswith("where") or "在哪里" in q]
    exists = [q for q in seen if q.startswith("is there") or q.endswith("吗?")]
    assert len(where) + len(exists) == len(seen) and len(exists) > len(where) > 0, seen
    for bad in ({"why": 1}, {"where": -1}, {"where": 0}):
        with pytest.raises(ValueError, match="kind_weights"):
            gen_trainer(small_data, tmp_path / "bad", kind_weights=bad)
