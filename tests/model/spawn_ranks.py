"""Run a function on N local processes joined by a gloo process group (loopback only)."""

from __future__ import annotations

import time

import torch
import torch.multiprocessing as mp

from vilg.app.train.distributed import free_port, local_rank_env


def _entry(rank, fn, world, port, mode, args):
    local_rank_env(rank, world, port)
    torch.set_num_threads(1)
    from vilg.app.train import distributed as D

    info = D.init(mode, timeout_min=3)
    try:
        fn(info, *args)
    finally:
        D.shutdown()


def run_ranks(fn, world: int, mode: str, *args, timeout: float = 240.0) -> None:
    """fn(info, *args) on `world` spawned ranks; raises if one fails or the time runs out
    (the processes are then killed: every spawned process ends)."""
    ctx = mp.start_processes(
        _entry,
        args=(fn, world, free_port(), mode, args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish in {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
