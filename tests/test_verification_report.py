"""docs/verification.md is generated (scripts/verification_report.py): it must match what the
repository holds now (harness sources, emulation tests, the resource table, mutation report)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "verification_report", ROOT / "scripts/verification_report.py"
)
vr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vr)


def test_every_cuda_source_belongs_to_a_family():
    sources = {p.name for p in (ROOT / "csrc/cuda").glob("*.cu") if p.name != "runtime.cu"}
    listed = {s for srcs, _ in vr.FAMILIES.values() for s in srcs}
    assert sources == listed  # runtime.cu defines no kernel


@pytest.mark.slow
def test_verification_page_is_fresh():
    text = (ROOT / "docs/verification.md").read_text()
    assert vr.render() == text, "run: python scripts/verification_report.py --write"


def test_mutation_report_is_read_per_family(tmp_path):
    (tmp_path / "mutation.json").write_text(
        '{"families": {"attention fwd": {"mutants": 10, "caught": 9, "invalid": 1},'
        ' "attention bwd": {"mutants": 5, "caught": 5, "invalid": 0},'
        ' "vq": {"mutants": 4, "caught": 3}}}'
    )
    name, scores = vr.mutation_scores(tmp_path)
    assert name.endswith("mutation.json")
    assert scores == {"attention": (14, 14), "vq": (3, 4)}
    assert vr.mutation_scores(tmp_path / "none") == (None, {})
