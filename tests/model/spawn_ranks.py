"""Run a function on N local processes joined by a gloo process group (loopback only)."""

from __future__ import annotations

import os
import socket
import time

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, mode, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from vilg.train import distributed as D

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
