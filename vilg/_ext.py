"""Loading the compiled extension `vilg._C`, with a clear message when it is missing."""

from __future__ import annotations

import functools


@functools.cache
def C():
    try:
        from vilg import _C
    except ImportError as e:  # pragma: no cover - depends on how vilg was installed
        raise ImportError(
            "vilg's compiled extension vilg._C is missing or broken; reinstall with "
            "`pip install -e . --no-build-isolation` (see README)"
        ) from e
    return _C


def build_info() -> dict:
    """What this build of vilg holds: version, CUDA archs, kernels per device, OpenMP..."""
    info = dict(C().build_info())
    kernels: dict[str, list[str]] = {}
    for name, device in info.pop("kernels"):
        kernels.setdefault(name, []).append(device)
    info["kernels"] = kernels
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda_available"] = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info
