"""Data-parallel training on PyTorch's own engine: DDP, or FSDP2 (`fully_shard`).

A run is started by `torchrun` (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT); `init()` joins the process group (nccl on GPU, gloo on CPU).

Every rank builds the same global batch of a step (it is a pure function of (seed, step))
and computes the loss of its own rows, normalised by the *global* row / token counts, so the
ranks' losses add up to the single-process loss and the averaged gradient equals the
single-process gradient (up to the order of float sums). See `Trainer` for the loop.

The whole step's forward (every stream of the micro-batch) runs inside one call of a small
wrapper module (`StepModule`), so DDP sees one forward per backward and FSDP's root module
gathers the parameters outside the blocks (embeddings, heads) once for the step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    mode: str  # ddp | fsdp
    rank: int
    world: int
    local_rank: int
    cpu_offload: bool = False  # fsdp: parameters, gradients and optimizer state on the CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A free TCP port on loopback, for a rendezvous of processes on this machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives rank `rank` of `world` processes on one machine
    (rendezvous on loopback), for workers spawned by tests and benchmarks."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )


def init(mode: str, cpu_offload: bool = False, timeout_min: float = 120.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables."""
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {MODES}, got {mode!r}")
    if cpu_offload and mode != "fsdp":
        raise ValueError("CPU offload is an FSDP option (--distributed fsdp)")
    if cpu_offload and not torch.cuda.is_available():
        # FSDP2's CPUOffloadPolicy pins host memory for GPU copies (torch 2.13: refused
        # without an accelerator); on a CPU run everything is on the CPU already
        raise ValueError("--cpu-offload moves GPU state to the CPU: it needs CUDA")
    need = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in need if k not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed {mode} needs a launcher such as torchrun (missing env {missing}); "
            "e.g. torchrun --nproc-per-node 2 -m vilg train --distributed " + mode
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # ranks wait at a barrier while rank 0 alone trains the small stages: allow long waits
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))
    return DistInfo(mode, dist.get_rank(), dist.get_world_size(), local_rank, cpu_offload)


def device_for(info: DistInfo | None, device: str | torch.device) -> torch.device:
    """Each rank's device: its local GPU under nccl, else the one asked for."""
    device = torch.device(device)
    if info is not None and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class StepModule(torch.nn.Module):
    """Runs `fn(*args)` as its forward, with `model` as its only child: the trainer's whole
    loss (or evaluation) then happens inside one forward of the wrapped module."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def wrap(model: torch.nn.Module, info: DistInfo, param_dtype: torch.dtype | None):
    """DDP or FSDP2 around `StepModule(model)`. FSDP shards every module of `model.blocks`
    (one all-gather per block) and the rest at the root; `param_dtype` (bf16 on GPU) is the
    compute dtype, gradients are reduced in fp32."""
    step = StepModule(model)
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(model.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        # a stream absent from a step (task-mix schedules) leaves parameters without grads
        return DDP(step, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kw = {}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if info.cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"FSDP needs a model with .blocks; {type(model).__name__} has none")
    for blk in blocks:
        fully_shard(blk, **kw)
    fully_shard(step, **kw)
    return step


def set_grad_sync(wrapped, info: DistInfo, sync: bool):
    """A context for one micro-batch: gradients are reduced only on the last of a step."""
    import contextlib

    if info.mode == "ddp":
        return contextlib.nullcontext() if sync else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum each scalar over the ranks (the ranks' loss shares -> the global loss)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def rows(n: int, info: DistInfo | None) -> slice:
    """This rank's contiguous share of n rows (the first n % world ranks get one more)."""
    if info is None:
        return slice(0, n)
    base, extra = divmod(n, info.world)
    start = info.rank * base + min(info.rank, extra)
    return slice(start, start + base + (info.rank < extra))
