"""bench/model_step.py --quick: a tiny run of every backend, its JSON and PNG."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def model_step():
    sys.path.insert(0, str(BENCH))
    try:
        import model_step

        yield model_step
    finally:
        sys.path.remove(str(BENCH))


def _check(doc, impls, steps):
    for key in ("device", "torch", "commit", "date", "config", "training"):
        assert key in doc
    per = doc["training"]["backends"]
    assert list(per) == impls
    for r in per.values():
        assert len(r["loss"]) == steps
        assert r["step_s"]["n"] >= 1 and r["step_s"]["best"] > 0
        assert 0 < r["attention_share"]["median"] < 1
        assert r["saved_activation_bytes"] > 0
    # same weights, same batches: the curves agree to float32 rounding
    for name, r in doc["training"]["ratios"].items():
        assert r["loss_max_abs_diff"] < 1e-4, name
        assert r["step_speedup_median"] > 0


def test_quick_in_process(model_step, tmp_path, monkeypatch):
    """Everything but the CPU memory probes (a process each), with the plot."""
    monkeypatch.setattr(
        model_step,
        "cpu_memory_probes",
        lambda args, impls: {i: {"peak_bytes": 1000 + n} for n, i in enumerate(impls)},
    )
    out = tmp_path / "q.json"
    model_step.main(["--quick", "--quiet", "--out", str(out)])
    doc = json.loads(out.read_text())
    _check(doc, ["vilg", "sdpa", "eager"], 4)
    assert out.with_suffix(".png").stat().st_size > 0
    assert doc["training"]["ratios"]["vilg_vs_eager"]["peak_memory_ratio"] == 1000 / 1002


@pytest.mark.slow
def test_quick_with_memory_probes(model_step, tmp_path):
    """The real CPU path: one fresh process per backend measures its peak resident set."""
    out = tmp_path / "q.json"
    model_step.main(["--quick", "--quiet", "--no-plot", "--impls", "vilg,eager", "--out", str(out)])
    doc = json.loads(out.read_text())
    _check(doc, ["vilg", "eager"], 4)
    for r in doc["training"]["backends"].values():
        assert r["memory"]["peak_bytes"] > 0, r["memory"]
        assert "VmHWM" in r["memory"]["method"] or "statm" in r["memory"]["method"]


def test_quick_generation_section(model_step, tmp_path):
    """--generate --no-train: the generation section (bench/generation.py) with this model."""
    out = tmp_path / "gen.json"
    doc = model_step.main(["--quick", "--no-train", "--generate", "--out", str(out)])
    assert "training" not in doc and json.loads(out.read_text())["generation"] == doc["generation"]
    modes = doc["generation"]["modes"]
    assert set(modes) == {"checked", "vilg", "sdpa"}
    assert modes["checked"]["same_tokens_as_vilg"]
    assert all(m["images_per_s"] > 0 for m in modes.values())
