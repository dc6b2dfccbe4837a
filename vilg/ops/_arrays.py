"""NumPy / CuPy interop: the ops accept arrays and answer in kind, zero-copy via DLPack."""

from __future__ import annotations

import functools

import torch


def _kind(x) -> str | None:
    root = type(x).__module__.split(".")[0]
    return root if root in ("numpy", "cupy") else None


def accepts_arrays(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():  # the type inspection below is not traceable
            return fn(*args, **kwargs)
        kinds = set()

        def to_torch(x):
            k = _kind(x)
            if k is None:
                return x
            kinds.add(k)
            return torch.from_numpy(x) if k == "numpy" else torch.from_dlpack(x)

        args = tuple(to_torch(a) for a in args)
        kwargs = {n: to_torch(a) for n, a in kwargs.items()}
        out = fn(*args, **kwargs)
        if not kinds:
            return out
        kind = kinds.pop()

        def back(t):
            if not isinstance(t, torch.Tensor):
                return t
            if kind == "numpy":
                return t.detach().cpu().numpy()
            import cupy

            return cupy.from_dlpack(t.detach())

        return tuple(back(t) for t in out) if isinstance(out, tuple) else back(out)

    return wrapper
