"""The application's old import paths (`vilg.model`, `vilg.train`, ...) keep working.

The ERNIE-ViLG application lives in `vilg.app` since the kernel library and the application
became separate layers. Code written against the earlier paths (`vilg.model.stepper`,
`vilg.train.presets`, ...) still imports: this finder maps each old name to the same module
object under `vilg.app`, imported only when asked for, so `import vilg` never loads the
application and the library keeps no import of it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

OLD = ("model", "train", "data", "eval", "generate", "demo", "plan", "cli", "checkpoint", "images")


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the very module, not a copy

    def exec_module(self, module):
        pass  # already executed under its real name


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "vilg" or parts[1] not in OLD:
            return None
        real = "vilg.app." + ".".join(parts[1:])
        if importlib.util.find_spec(real) is None:
            return None
        is_pkg = hasattr(importlib.import_module(real), "__path__")
        return importlib.util.spec_from_loader(fullname, _Alias(real), is_package=is_pkg)


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before PathFinder, which would load a 2nd copy
