"""Moved to `vilg.checkpoint` (training and inference both read checkpoints); this name
stays for code that imports it from here."""

from vilg.checkpoint import *  # noqa: F403
from vilg.checkpoint import _fsync_dir  # noqa: F401
