"""The application moved to vilg.app; its earlier import paths still give the same modules."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "old",
    [
        "vilg.model.stepper",
        "vilg.model.transformer",
        "vilg.train.presets",
        "vilg.data.shapes",
        "vilg.eval.evaluate",
        "vilg.generate",
        "vilg.checkpoint",
        "vilg.cli",
    ],
)
def test_old_path_is_the_same_module(old):
    new = old.replace("vilg.", "vilg.app.", 1)
    assert importlib.import_module(old) is importlib.import_module(new)


def test_unknown_old_submodule_raises():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vilg.model.no_such_module")


def test_import_vilg_loads_no_application():
    code = (
        "import sys, vilg, vilg.ops, vilg.nn, vilg.layouts\n"
        "print(sorted(m for m in sys.modules if m.startswith('vilg.app')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
