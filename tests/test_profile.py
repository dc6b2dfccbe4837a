"""`vilg profile`: the work it counts, the JSON it writes, and its errors (CPU, tiny shapes)."""

import json

import pytest
import torch

from vilg.app.cli import main as cli_main
from vilg.layouts import ernie_vilg
from vilg.profile import main
from vilg.profile.measure import attention_entries

ARGS = ["--warmup", "1", "--iters", "2", "--probe-seconds", "0.02"]


@pytest.mark.parametrize(
    "kind,direction,text,grid,lens",
    [
        ("row", "text2image", 11, (5, 7), None),
        ("conv", "text2image", 70, (9, 9), [70, 3, 41]),
        ("column", "image2text", 9, (6, 4), [0, 9]),
        ("full", "vqa", 13, (3, 3), [13, 5]),
    ],
)
def test_useful_entries_match_the_dense_mask(kind, direction, text, grid, lens):
    lay = ernie_vilg(kind, text, grid, direction, answer_len=4 if direction == "vqa" else 0)
    mask = lay.dense_mask()
    start, length = lay.text_segment
    expect = 0
    for t in lens if lens is not None else [length]:
        keep = torch.ones(lay.seq_len, dtype=torch.bool)
        keep[start + t : start + length] = False
        expect += int(mask[:, keep].sum())
    ent = attention_entries(lay, None if lens is None else torch.tensor(lens), chunk=7)
    assert ent["useful_per_batch"] == expect
    # visited entries: every listed tile, clipped to the sequence
    L, bs = lay.seq_len, lay.block_size
    visited = 0
    for qb in range(lay.num_blocks):
        for kb in range(lay.num_blocks):
            tile = mask[qb * bs : (qb + 1) * bs, kb * bs : (kb + 1) * bs]
            visited += tile.numel() if tile.any() else 0
    if lay._perm is None:  # the dense-mask tiling is the kernel's only without a permutation
        assert ent["visited"] == visited
        blocks = 0  # 4x16 blocks of a visited tile holding an allowed entry (before padding)
        for qb in range(lay.num_blocks):
            for kb in range(lay.num_blocks):
                tile = mask[qb * bs : (qb + 1) * bs, kb * bs : (kb + 1) * bs]
                if not tile.any():
                    continue
                if tile.all() and tile.shape == (bs, bs):
                    blocks += bs * bs
                    continue
                r16, c16 = (-(-n // 16) * 16 for n in tile.shape)
                padded = torch.zeros(r16, c16, dtype=torch.bool)
                padded[: tile.shape[0], : tile.shape[1]] = tile
                occ = padded.reshape(r16 // 4, 4, c16 // 16, 16).any(3).any(1)
                blocks += int(occ.sum()) * 64
        assert ent["cpu_blocks"] == blocks
    assert expect <= ent["visited"] * len(lens or [0]) <= len(lens or [0]) * L * L


def test_attention_profile_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["attention", "--kind", "row", "--text", "8", "--grid", "4", "5", "--heads", "2"]
    assert main(argv + ["--batch", "2", "--head-dim", "16", "--json", str(out)] + ARGS) == 0
    doc = json.loads(out.read_text())
    lay = ernie_vilg("row", 8, (4, 5))
    allowed = int(lay.dense_mask().sum())
    assert doc["flops_useful"] == 4 * 16 * allowed * 2 * 2
    assert doc["flops_computed"] >= doc["flops_useful"]
    assert 0 < doc["entry_density"] <= 1
    assert doc["tiles"]["visited"] == lay.num_tiles
    assert doc["tiles"]["full"] + doc["tiles"]["partial"] == lay.num_tiles
    assert doc["time_ms"]["iters"] == 2 and doc["time_ms"]["median"] > 0
    ms = doc["time_ms"]["median"]
    assert doc["gflops_useful"] == pytest.approx(doc["flops_useful"] / ms / 1e6)
    lim = doc["limit"]
    assert lim["gemm_gflops"] > 0 and lim["copy_gbs"] > 0
    assert doc["pct_of_gemm"] == pytest.approx(100 * doc["gflops_useful"] / lim["gemm_gflops"])
    assert [k["name"] for k in doc["kernels"]] == ["vilg::sparse_attention_fwd"]
    assert "cpu" in doc["meta"]["vilg"]["kernels"]["sparse_attention_fwd"]
    assert "GEMM probe" in capsys.readouterr().out


def test_fwdbwd_counts_both_kernels_and_padding(tmp_path):
    out = tmp_path / "p.json"
    argv = ["attention", "--kind", "conv", "--mode", "fwdbwd", "--text", "12", "--grid", "6", "6"]
    argv += ["--batch", "2", "--text-lens", "12", "5", "--head-dim", "8", "--json", str(out)]
    assert main(argv + ARGS) == 0
    doc = json.loads(out.read_text())
    names = {k["name"] for k in doc["kernels"]}
    assert names == {"vilg::sparse_attention_fwd", "vilg::sparse_attention_bwd"}
    lay = ernie_vilg("conv", 12, (6, 6))
    mask = lay.dense_mask()
    keep = torch.cat([torch.arange(5), torch.arange(12, 48)])  # sample 1: text keys 5..11 padded
    allowed = int(mask.sum()) + int(mask[:, keep].sum())
    assert doc["flops_useful"] == 14 * 8 * allowed * 8  # 8 heads, batch summed in `allowed`


@pytest.mark.parametrize(
    "argv,key",
    [
        (["vq", "--tokens", "300", "--codes", "40", "--dim", "12"], 2 * 300 * 40 * 12),
        (["decode", "--kind", "row", "--grid", "4", "4", "--text", "6", "--pos", "15"], None),
        (["sample", "--batch", "3", "--vocab", "50", "--top-k", "5"], 0),
    ],
)
def test_other_ops(tmp_path, argv, key):
    out = tmp_path / "p.json"
    assert main(argv + ["--json", str(out)] + ARGS) == 0
    doc = json.loads(out.read_text())
    if argv[0] == "decode":
        keys = ernie_vilg("row", 6, (4, 4)).keys_for_query(15).numel()
        assert doc["keys"] == keys and doc["flops_useful"] == 4 * 8 * keys * 64
    else:
        assert doc["flops_useful"] == key
    assert doc["bytes"] > 0 and doc["gbs"] > 0 and doc["kernels"]


def test_trace_has_a_named_range_per_call(tmp_path):
    trace = tmp_path / "t.json"
    argv = ["attention", "--grid", "3", "3", "--text", "4", "--trace", str(trace)] + ARGS
    assert cli_main(["profile", *argv]) == 0
    names = [e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]]
    assert sum(n.startswith("vilg.profile attention") for n in names) == 2
    assert "vilg::sparse_attention_fwd" in names


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["attention", "--dtype", "int8"], "dtype"),
        (["attention", "--batch", "0"], "--batch"),
        (["attention", "--batch", "2", "--text-lens", "1", "2", "3"], "--text-lens"),
        (["attention", "--ncu"], "--ncu needs --device cuda"),
    ],
)
def test_bad_arguments_say_what_is_wrong(argv, msg, capsys):
    assert main(argv + ARGS) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_gpu_profile_has_device_times_and_datasheet(tmp_path, mode):
    out, trace = tmp_path / "p.json", tmp_path / "t.json"
    argv = ["attention", "--device", "cuda", "--dtype", "bfloat16", "--mode", mode, "--batch", "2"]
    assert main(argv + ["--json", str(out), "--trace", str(trace)] + ARGS) == 0
    doc = json.loads(out.read_text())
    gpu_kernels = [k for k in doc["kernels"] if not k["name"].startswith("vilg::")]
    assert gpu_kernels and all(k["device_ms_per_call"] > 0 for k in gpu_kernels)
    assert doc["limit"]["gemm"].endswith("bfloat16") and doc["limit"]["gemm_gflops"] > 1e3
    if any(name in doc["device_name"] for name in ("H100", "H200", "A100")):
        assert doc["limit"]["datasheet"]["bf16_tflops"] > 0
    assert 0 < doc["pct_of_gemm"] < 100


@pytest.mark.cuda
def test_ncu_runs_one_launch():
    assert main(["attention", "--device", "cuda", "--dtype", "bfloat16", "--ncu"] + ARGS) == 0
