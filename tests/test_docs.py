"""The README and the docs site: measured tables rendered from bench/results, links that resolve,
and nothing that points outside the repository."""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts/render_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rd = _renderer()


def test_rendered_tables_are_fresh():
    assert rd.stale() == [], "run: python scripts/render_docs.py"


def test_a_hand_edited_table_is_stale(tmp_path):
    src = (ROOT / "docs/benchmarks.md").read_text()
    m = re.search(r"<!-- render: attention -->\n.*?\| (\d+\.\d+)x \|", src, re.S)
    assert m, "the attention block holds no ratio"
    edited = src[: m.start(1)] + "99.99" + src[m.end(1) :]
    page = tmp_path / "page.md"
    page.write_text(edited)
    assert rd.stale([page]) == [f"{page}: attention"]
    assert rd.render_text(edited) == src  # rendering puts the recorded number back


def test_every_block_names_a_table_and_every_table_is_shown():
    used = set()
    for path in rd.documents():
        used.update(rd.block_names(path.read_text()))
    named = {n for n in used if not n.startswith("file:")}
    assert named <= set(rd.TABLES), named - set(rd.TABLES)
    assert set(rd.TABLES) <= used, f"tables rendered nowhere: {set(rd.TABLES) - used}"
    with pytest.raises(KeyError, match="no table named"):
        rd.render_text("<!-- render: no-such-table -->\n<!-- /render -->")


def test_tables_show_every_round_and_the_load_each_file_recorded():
    profile = rd.TABLES["profile"]()
    rounds = rd.load("profile-cpu-2026-11-30")["rounds"]
    for threads, rs in rounds.items():
        assert f"**{threads}**" in profile
        assert f"round {len(rs)}: before → after" in profile
    dropin = rd.TABLES["dropin"]()
    for name, _ in rd.DROPIN_RUNS:
        d = rd.load(name)
        assert f"`{name}`, {d['commit']}, {rd.loads(d['load_average'])})" in dropin
    step = rd.TABLES["model-step"]()
    for name in rd.MODEL_STEP_RUNS:
        assert rd.fmt_load(rd.load(name)["load_average"]) in step


def test_a_results_file_renders_with_no_code():
    text = rd.render_text("<!-- render: file:vq-cpu-2026-11-23 -->\n<!-- /render -->")
    rows = rd.load("vq-cpu-2026-11-23")["rows"]
    assert text.count("| vq_") == len(rows)  # every row
    assert "commit d538260-dirty" in text and "load average 1.3 / 1.8 / 2.3" in text


def test_every_results_file_keeps_its_provenance():
    for path in sorted(rd.RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        assert d.get("date") or "rounds" in d, f"{path.name}: no date"


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "python -m pytest -q" in text  # the test command .ci/run relies on
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_docs_nav_lists_existing_pages():
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for n in node:
                yield from pages(n)
        elif isinstance(node, dict):
            for n in node.values():
                yield from pages(n)

    listed = set(pages(cfg["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert listed <= on_disk, f"nav names missing pages: {listed - on_disk}"
    assert on_disk <= listed, f"pages missing from the nav: {on_disk - listed}"


OUTSIDE = re.compile("shared" + r"/specs|\bspecs/[\w-]+\.md")


def test_nothing_points_outside_the_repository():
    try:
        files = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".png", ".json"} or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{i}")
    assert hits == []
