"""Checkpoints: safetensors for tensors + JSON for everything else, written atomically.

Every file is written to a temporary name in the same directory, fsync'ed, then renamed
over the target with os.replace (atomic on POSIX), and the directory is fsync'ed. A training
checkpoint is a directory `ckpt-<step>` made the same way (built under a temporary name,
then renamed), and `latest.json` -- itself replaced atomically -- names the newest complete
one, so a kill at any moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model asked for."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False).encode())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return st_load(path.read_bytes())
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"unreadable checkpoint file {path}: {e}") from e


def load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt JSON file {path}: {e}") from e


def load_model_state(model: torch.nn.Module, path: str | Path) -> None:
    """Load weights, with a clear error if they do not fit the model."""
    state = load_tensors(path)
    own = model.state_dict()
    optional = {  # state added since older checkpoints: the module's defaults stand
        f"{name}.{k}" if name else k
        for name, mod in model.named_modules()
        for k in getattr(mod, "OPTIONAL_STATE", ())
    }
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"checkpoint {path} does not match this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {bad[:5]}"
        )
    model.load_state_dict(state, strict=False)


# ------------------------------------------------------------------ optimizer state


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}/{k}"] = v
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = dict(st)
    for key, v in tensors.items():
        pid, k = key.split("/", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ------------------------------------------------------------------ training checkpoints


def save_training_checkpoint(
    stage_dir: str | Path, step: int, files: dict[str, object], keep: int = 2
) -> Path:
    """files: name -> dict of tensors (.safetensors) or JSON-able object (.json) or bytes."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=f".{name}."))
    for fname, obj in files.items():
        if fname.endswith(".safetensors"):
            save_tensors(tmp / fname, obj)
        elif fname.endswith(".json"):
            atomic_write_json(tmp / fname, obj)
        else:
            atomic_write_bytes(tmp / fname, obj)
    return publish_checkpoint(stage_dir, step, tmp, keep)


def publish_checkpoint(stage_dir: Path, step: int, tmp: Path, keep: int = 2) -> Path:
    """Rename the complete directory `tmp` to ckpt-<step>, point latest.json at it and drop
    all but the newest `keep` checkpoints."""
    name = f"ckpt-{step:08d}"
    final = stage_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(stage_dir)
    atomic_write_json(stage_dir / "latest.json", {"step": step, "dir": name})
    ckpts = sorted(p for p in stage_dir.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    p = Path(stage_dir) / "latest.json"
    if not p.exists():
        return None
    d = Path(stage_dir) / load_json(p)["dir"]
    if not d.is_dir():
        raise CheckpointError(f"latest.json names {d}, which does not exist")
    return d
