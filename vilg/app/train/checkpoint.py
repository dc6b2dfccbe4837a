"""Moved to `vilg.app.checkpoint` (training and inference both read checkpoints); this name
stays for code that imports it from here."""

from vilg.app.checkpoint import *  # noqa: F403
from vilg.app.checkpoint import _fsync_dir  # noqa: F401
