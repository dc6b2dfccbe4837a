"""`vilg prepare` (images -> code shards) and generator training streamed from the shards."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from dist_workers import shard_trainer, train_from_shards
from PIL import Image
from spawn_ranks import run_ranks

from vilg.app.cli import main
from vilg.app.data import stream as S
from vilg.app.train import checkpoint as ckpt
from vilg.app.train.shards import load_image_tokenizer, load_split


def _png(i):
    rng = np.random.default_rng(i)
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(b, format="PNG")
    return b.getvalue()


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def prepared(tiny_run, tmp_path_factory):
    """12 good images (one of them with a corrupt copy, one without text) in 2 raw shards,
    prepared with the tiny run's image tokenizer."""
    root = tmp_path_factory.mktemp("prep")
    for k in range(2):
        with tarfile.open(root / f"raw-{k}.tar", "w") as tf:
            for i in range(6 * k, 6 * k + 6):
                _add(tf, f"s{i:03d}.png", _png(i))
                _add(tf, f"s{i:03d}.txt", f"picture number {i}".encode())
            _add(tf, f"bad{k}.png", b"not a png")
            _add(tf, f"bad{k}.txt", b"corrupt image")
    with tarfile.open(root / "raw-0.tar", "a") as tf:
        _add(tf, "notext.png", _png(99))
    out = root / "shards"
    assert main(["prepare", "--run", str(tiny_run), "--out", str(out),
                 "--data", str(root / "raw-*.tar"), "--per-shard", "4"]) == 0  # fmt: skip
    return tiny_run, out


def test_prepare_writes_codes_and_counts_corrupt_samples(prepared, capsys):
    run, out = prepared
    info = json.loads((out / "prepared.json").read_text())
    # 12 good samples: every 10th held out (2), 10 to train; 3 corrupt ones skipped
    assert info["samples"] == {"train": 10, "val": 2} and info["skipped"] == 3
    assert len(list((out / "train").glob("*.tar"))) == 3  # 4 per shard
    vq = load_image_tokenizer(run)
    items = list(S.ShardStream(str(out / "train" / "*.tar"), S.decode_codes, shuffle_buffer=1,
                               epochs=1))  # fmt: skip
    texts = sorted(x["sample"]["text"] for x in items)
    assert texts == sorted(f"picture number {i}" for i in range(12) if i not in (0, 10))
    x = items[0]["sample"]
    i = int(x["text"].split()[-1])
    img = np.asarray(Image.open(io.BytesIO(_png(i))).convert("RGB"))
    from vilg.app.data.user import preprocess

    want = vq.encode(
        torch.from_numpy(np.array(preprocess(Image.fromarray(img), vq.cfg.image_size)[None]))
        .permute(0, 3, 1, 2)
        .float()
        / 255
    ).flatten()
    assert torch.equal(torch.from_numpy(x["codes"]), want)
    val, codes = load_split(out / "val")
    assert len(val) == 2 and codes.shape == (2, vq.cfg.grid[0] * vq.cfg.grid[1])

    assert main(["prepare", "--run", str(run), "--out", str(out)]) == 2
    assert "already holds prepared shards" in capsys.readouterr().err


def test_a_streamed_run_killed_mid_epoch_resumes_at_its_data_position(prepared, tmp_path):
    run, shards = prepared
    full, seen = shard_trainer(run, tmp_path / "full", shards)
    full.fit()
    # 6 steps of 4 = 24 samples = 2 epochs of 10 and 4 samples of the third
    assert len(seen) == 24 and sorted(seen[:10]) == sorted(seen[10:20]) and len(set(seen)) == 10
    killed, before = shard_trainer(run, tmp_path / "killed", shards)
    killed.fit(stop_at=1)  # after 4 of the first epoch's 10 samples
    state = json.loads((tmp_path / "killed/checkpoints/ckpt-00000001/state.json").read_text())
    assert state["extra"]["data_position"] == [0, 4]
    resumed, after = shard_trainer(run, tmp_path / "killed", shards)
    resumed.fit()
    assert before + after == seen  # nothing seen twice, nothing skipped, same order
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    exported = ckpt.load_tensors(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(exported[k], a[k]) for k in a)


@pytest.mark.slow
def test_a_streamed_fsdp_run_resumes_on_one_process_at_its_data_position(prepared, tmp_path):
    """2 ranks take 2 samples each per step; killed after step 2 (8 of the epoch's 10), the
    run resumes in one process: the epoch's samples are each seen once."""
    run, shards = prepared
    out = tmp_path / "run"
    run_ranks(train_from_shards, 2, "fsdp", run, out, shards, 2)
    before = [k for r in range(2) for k in json.loads((out / f"keys-{r}.json").read_text())]
    assert len(before) == len(set(before)) == 8
    state = json.loads((out / "checkpoints/ckpt-00000002/state.json").read_text())
    assert state["extra"]["data_position"] == [0, 8] and state["world_size"] == 2
    one, after = shard_trainer(run, out, shards)
    one.fit()
    epoch0 = before + after[:2]
    assert sorted(epoch0) == sorted(after[2:12])  # the next epoch: the same 10 samples
    assert len(set(epoch0)) == 10


def test_prepare_decodes_in_workers_with_the_same_result(prepared, tmp_path):
    run, out = prepared
    out2 = tmp_path / "shards2"
    raw = str(out.parent / "raw-*.tar")
    assert main(["prepare", "--run", str(run), "--out", str(out2), "--data", raw,
                 "--workers", "2", "--per-shard", "4"]) == 0  # fmt: skip

    def read(d):
        st = S.ShardStream(str(d / "train" / "*.tar"), S.decode_codes, shuffle_buffer=1, epochs=1)
        return [(x["sample"]["text"], x["sample"]["codes"].tolist()) for x in st]

    assert read(out2) == read(out)
    assert json.loads((out2 / "prepared.json").read_text())["skipped"] == 3
