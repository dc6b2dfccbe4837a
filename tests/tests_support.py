from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The oldest torch vilg supports (pyproject's torch>=X.Y, its newest patch): CI's slow set
# installs it beside the release wheel (tests/test_wheel.py); docs/compatibility.md has the rest.
TORCH_FLOOR = "2.4.1"
