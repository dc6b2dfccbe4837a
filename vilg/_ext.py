"""Loading the compiled extension `vilg._C`, with a clear message when it is missing."""

from __future__ import annotations

import functools
import json
from importlib import metadata
from pathlib import Path

# The distributions that can provide the `vilg` package (one at a time): see README, "Install".
DISTRIBUTIONS = ("vilg", "vilg-cu13", "vilg-cu12")


@functools.cache
def C():
    # torch first: `_C` needs libgomp.so.1 and must share torch's copy (one OpenMP runtime, so
    # torch.set_num_threads governs vilg's kernels too). A repaired wheel does not vendor its
    # own libgomp (scripts/build_wheels.sh excludes it), so torch's is the one found.
    import torch  # noqa: F401

    try:
        from vilg import _C
    except ImportError as e:  # pragma: no cover - depends on how vilg was installed
        raise ImportError(
            "vilg's compiled extension vilg._C is missing or broken; reinstall vilg (see README, "
            f"'Install'; from source: `pip install -e . --no-build-isolation`): {e}"
        ) from e
    return _C


def _installed() -> dict:
    """Which distribution installed vilg, from a wheel or editable, and its wheel tags."""
    for name in DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        wheel = dist.read_text("WHEEL") or ""
        tags = [ln.split(":", 1)[1].strip() for ln in wheel.splitlines() if ln.startswith("Tag:")]
        return {
            "distribution": f"{dist.metadata['Name']} {dist.version}",
            "editable": bool(direct.get("dir_info", {}).get("editable")),
            "wheel_tags": tags,
        }
    return {"distribution": None}


def build_info() -> dict:
    """How this vilg was built and installed: version, compilers, CUDA archs / PTX / driver,
    OpenMP, kernels per device, torch. Everything a bug report needs."""
    info = dict(C().build_info())
    kernels: dict[str, list[str]] = {}
    for name, device in info.pop("kernels"):
        kernels.setdefault(name, []).append(device)
    info["kernels"] = kernels
    info["extension"] = str(Path(C().__file__).resolve())
    info["install"] = _installed()
    import torch

    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["torch_cuda_available"] = torch.cuda.is_available()
    return info
