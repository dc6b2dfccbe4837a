"""vilg: block-sparse attention kernels and a bidirectional text<->image model.

The kernel library is `vilg.layouts`, `vilg.patterns`, `vilg.ops`, `vilg.nn`,
`vilg.integrations` and `vilg.profile`; the ERNIE-ViLG application built on it (model,
training, data, evaluation, generation and the `vilg` command) is `vilg.app`.
"""

from vilg import _app_aliases
from vilg._ext import build_info

_app_aliases.install()

__version__ = "0.1.0"
__all__ = ["build_info", "__version__"]
