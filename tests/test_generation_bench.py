"""bench/generation.py on a tiny model: every CPU mode runs, the JSON holds the fields the
benchmarks page renders, and the vilg modes produce the same tokens as the checked-op loop."""

import json
import sys

import pytest
from tests_support import ROOT


@pytest.mark.parametrize("modes", [["checked", "vilg", "sdpa"]])
def test_generation_bench_quick(tmp_path, modes):
    sys.path.insert(0, str(ROOT / "bench"))
    import generation

    out = tmp_path / "gen.json"
    generation.main(
        ["--device", "cpu", "--layers", "2", "--hidden", "32", "--heads", "2", "--grid", "6",
         "--text-len", "9", "--codes", "50", "--batch", "3", "--rounds", "1", "--tokens", "24",
         "--modes", *modes, "-o", str(out)]
    )  # fmt: skip
    doc = json.loads(out.read_text())
    rows = {r["mode"]: r for r in doc["rows"]}
    assert set(rows) == set(modes) and doc["config"]["tokens"] == 24
    for r in rows.values():
        assert r["ms_per_token_median"] > 0 and r["images_per_s"] > 0 and r["batch"] == 3
    assert rows["checked"]["same_tokens_as_vilg"]
    assert rows["sdpa"]["token_agreement_with_vilg"] > 0.9
    assert "speedup_vs_checked" in rows["vilg"] and "speedup_vs_sdpa" in rows["vilg"]
