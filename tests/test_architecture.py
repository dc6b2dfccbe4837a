"""The import contracts of pyproject.toml ([tool.importlinter]): the kernel library never
imports the application, the model never imports training, and nothing imports in a cycle."""

import shutil
import subprocess

import pytest
from tests_support import ROOT

LINT = shutil.which("lint-imports")


@pytest.mark.skipif(LINT is None, reason="needs import-linter (the test extra installs it)")
def test_import_contracts_hold():
    out = subprocess.run(
        [LINT, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
