"""One training loop shared by every stage (image tokenizer, matcher, generator, end-to-end).

A stage subclasses `Trainer` and supplies `batch(step, micro)` -> loss terms; the loop adds
gradient accumulation, autocast (bf16 / fp16 with loss scaling on GPU), gradient clipping,
cosine LR with linear warm-up, a progress bar with loss and throughput, periodic evaluation,
and atomic checkpoints that resume exactly: model, optimizer, LR step, torch / numpy / python
RNG states and the data position (batches are a pure function of (seed, step), so the step
is the data position).

Under `torchrun` (`dist` set, see vilg/app/train/distributed.py) the same loop runs data-parallel
with DDP or FSDP2: each rank computes its rows of the global batch, checkpoints are sharded
`torch.distributed.checkpoint` directories that load on any number of processes, and the
torch RNG is re-seeded every step from (seed, step, rank) so that it needs no saved state.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vilg.app import checkpoint as ckpt
from vilg.app.train import distributed as D


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)
    grad_accum: int = 1
    clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler) | auto
    grad_checkpointing: bool = False
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 200
    keep: int = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ValueError(f"precision must be fp32, bf16, fp16 or auto, got {self.precision!r}")
        if self.grad_accum < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU, where half-precision
    matmuls without bf16 hardware fall back to slow scalar paths."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))


def rng_state() -> tuple[dict, dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = s
    st = random.getstate()
    meta = {
        "python": [st[0], list(st[1]), st[2]],
        "numpy": [
            np.random.get_state()[0],
            np.random.get_state()[1].tolist(),
            *np.random.get_state()[2:],
        ],
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


class Trainer:
    """The training loop of one stage: optimizer, mixed precision, gradient accumulation,
    data-parallel wrapping (DDP / FSDP2 under torchrun), atomic checkpoints, resume and export.

    `fit(stop_at=None, resume=True)` trains to `cfg.steps`, resuming from the last checkpoint
    (`try_resume`), saving every `cfg.ckpt_every` steps (`save`) and writing the final weights
    (`export`). A stage subclasses it, passes its model to `__init__`, and overrides:

    - `loss(step, micro) -> (loss, logs, n_samples)` (required): one micro-batch;
    - `evaluate() -> dict`: metrics logged every `cfg.eval_every` steps and at the end;
    - `parameters()`: what the optimizer trains (default: every parameter that requires grad);
    - `model_config() -> dict`: the config.json written beside the weights;
    - `extra_state()` / `load_extra_state(state)`: more JSON state in each checkpoint;
    - `extra_files()` / `load_extra_files(ckpt_dir)`: more files in each checkpoint;
    - `after_step(step)`: after each optimizer step; `finish()`: after the last step.
    """

    name = "stage"
    # a distributed trainer's `loss` returns this rank's share of the global batch's loss
    # (see GeneratorTrainer.rank_rows); stages that do not split their batch run in one process
    splits_batch_over_ranks = False

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        device: str | torch.device = "cpu",
        dist: D.DistInfo | None = None,
    ):
        self.model, self.cfg, self.dist = model, cfg, dist
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.model.to(self.device)
        if cfg.grad_checkpointing and hasattr(model, "grad_checkpointing"):
            model.grad_checkpointing = True
        precision = resolve_precision(cfg.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.wrapped = None
        if dist is not None and not self.splits_batch_over_ranks:
            raise ValueError(f"the {self.name} stage trains in one process (no --distributed)")
        if dist is not None:
            if dist.mode == "fsdp" and precision == "fp16":
                raise ValueError("FSDP trains in fp32 or bf16 (no fp16 loss scaling); use bf16")
            # FSDP casts parameters to bf16 itself (fp32 master weights, fp32 reduction)
            fsdp_bf16 = dist.mode == "fsdp" and precision == "bf16"
            self.wrapped = D.wrap(model, dist, torch.bfloat16 if fsdp_bf16 else None)
            if fsdp_bf16:
                self.amp_dtype = None
        self.opt = self.make_optimizer()  # after wrapping: FSDP's parameters are shards
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.step = 0
        self.last_logs: dict = {}  # the last step's losses (summed over the ranks)
        self.history: list[dict] = []

    # ------------------------------------------------------------------ hooks

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self):
        decay, no_decay = [], []
        for p in self.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas)

    def loss(self, step: int, micro: int):
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def finish(self) -> None:
        """After the last step, before the final eval and export (must be idempotent: a run
        killed after it resumes at the last step and calls it again)."""

    def model_config(self) -> dict:
        return {}

    def extra_state(self) -> dict:
        return {}

    def extra_files(self) -> dict:
        """More files for each checkpoint (name -> tensors or JSON), written with it atomically."""
        return {}

    def load_extra_files(self, ckpt_dir: Path) -> None:
        pass

    def load_extra_state(self, state: dict) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    @property
    def is_main(self) -> bool:
        """The process that writes files shared by all ranks (logs, samples, exports)."""
        return self.dist is None or self.dist.is_main

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        if self.dist is not None:
            return self._save_sharded()
        opt_t, opt_m = ckpt.optimizer_to_flat(self.opt)
        rng_t, rng_m = rng_state()
        state = {
            "step": self.step,
            "optimizer": opt_m,
            "rng": rng_m,
            "scaler": self.scaler.state_dict(),
            "extra": self.extra_state(),
            "train_config": asdict(self.cfg),
            "history": self.history,
        }
        files = {
            "model.safetensors": self.model.state_dict(),
            "config.json": self.model_config(),
            "optimizer.safetensors": opt_t,
            "rng.safetensors": rng_t,
            "state.json": state,
            **self.extra_files(),
        }
        return ckpt.save_training_checkpoint(
            self.out_dir / "checkpoints", self.step, files, keep=self.cfg.keep
        )

    def _save_sharded(self) -> Path:
        """Every rank writes its shards (torch.distributed.checkpoint) into a temporary
        directory; rank 0 adds state.json and publishes it like a single-process one."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        stage_dir = self.out_dir / "checkpoints"
        tmp = stage_dir / f".ckpt-{self.step:08d}.partial"
        if self.is_main:
            ckpt.remove_tree(tmp)
            tmp.mkdir(parents=True)
        D.barrier()
        msd, osd = get_state_dict(self.model, self.opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
        final = stage_dir / f"ckpt-{self.step:08d}"
        if self.is_main:
            state = {
                "format": "torch.distributed.checkpoint",
                "step": self.step,
                "world_size": self.dist.world,
                "scaler": self.scaler.state_dict(),
                "extra": self.extra_state(),
                "train_config": asdict(self.cfg),
                "history": self.history,
            }
            ckpt.atomic_write_json(tmp / "state.json", state)
            ckpt.atomic_write_json(tmp / "config.json", self.model_config())
            final = ckpt.publish_checkpoint(stage_dir, self.step, tmp, keep=self.cfg.keep)
        D.barrier()
        return final

    def _load_sharded(self, d: Path) -> dict:
        """A sharded checkpoint, saved on any number of ranks, into this model + optimizer
        (resharded to this run's ranks; without a process group, into one process)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        msd, osd = get_state_dict(self.model, self.opt)
        try:
            dcp.load({"model": msd, "optim": osd}, checkpoint_id=d)
        except Exception as e:  # a missing / foreign shard: say which checkpoint
            raise ckpt.CheckpointError(f"cannot load sharded checkpoint {d}: {e}") from e
        set_state_dict(self.model, self.opt, model_state_dict=msd, optim_state_dict=osd)
        return ckpt.load_json(d / "state.json")

    def _load_flat_sharded(self, d: Path, state: dict) -> None:
        """A single-process checkpoint into a distributed run: every rank reads the full
        weights and optimizer state and keeps its own shards (the flat format numbers the
        parameters in optimizer order). The RNG is re-seeded per step in a distributed run."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.tensor import DTensor, distribute_tensor

        def fill(dst, full):  # this rank's part of `full`, shaped like `dst`; no messages
            if isinstance(dst, DTensor):
                full = full.to(dst.dtype)
                return distribute_tensor(full, dst.device_mesh, dst.placements, src_data_rank=None)
            return full.to(dst.dtype).to(dst.device) if torch.is_tensor(dst) else full

        weights = ckpt.load_tensors(d / "model.safetensors")
        names = {id(p): n for n, p in self.model.named_parameters()}
        order = [names[id(p)] for g in self.opt.param_groups for p in g["params"]]
        flat, meta = ckpt.load_tensors(d / "optimizer.safetensors"), state["optimizer"]
        full_opt = {order[int(pid)]: dict(st) for pid, st in meta["state"].items()}
        for key, v in flat.items():
            pid, k = key.split("/", 1)
            full_opt.setdefault(order[int(pid)], {})[k] = v
        msd, osd = get_state_dict(self.model, self.opt)  # the shapes and shardings to fill
        missing = sorted(set(msd) - set(weights)) + sorted(set(osd["state"]) - set(full_opt))
        if missing:
            raise ckpt.CheckpointError(f"{d} does not match this model: missing {missing[:5]}")
        msd = {k: fill(v, weights[k]) for k, v in msd.items()}
        osd = {
            "state": {
                n: {k: fill(v, full_opt[n][k]) for k, v in st.items()}
                for n, st in osd["state"].items()
            },
            "param_groups": [
                {**g, "params": own["params"]}
                for g, own in zip(meta["param_groups"], osd["param_groups"])
            ],
        }
        set_state_dict(self.model, self.opt, model_state_dict=msd, optim_state_dict=osd)

    def try_resume(self) -> bool:
        d = ckpt.latest_checkpoint(self.out_dir / "checkpoints")
        if d is None:
            return False
        if (d / ".metadata").exists():
            state = self._load_sharded(d)
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.load_extra_state(state.get("extra", {}))
            self.history = state.get("history", [])
            self.step = int(state["step"])
            return True
        state = ckpt.load_json(d / "state.json")
        if self.dist is not None:  # a one-process checkpoint: every rank reads it whole
            self._load_flat_sharded(d, state)
        else:
            ckpt.load_model_state(self.model, d / "model.safetensors")
            ckpt.optimizer_from_flat(
                self.opt, ckpt.load_tensors(d / "optimizer.safetensors"), state["optimizer"]
            )
            set_rng_state(ckpt.load_tensors(d / "rng.safetensors"), state["rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state.get("extra", {}))
        self.load_extra_files(d)
        self.history = state.get("history", [])
        self.step = int(state["step"])
        return True

    def export(self) -> None:
        """Final weights + config for inference (atomic)."""
        if self.dist is not None:  # gather the full weights (collective), rank 0 writes them
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            full = get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            if self.is_main:
                ckpt.save_tensors(self.out_dir / "model.safetensors", full)
                ckpt.atomic_write_json(self.out_dir / "config.json", self.model_config())
            D.barrier()
            return
        ckpt.save_tensors(self.out_dir / "model.safetensors", self.model.state_dict())
        ckpt.atomic_write_json(self.out_dir / "config.json", self.model_config())

    # ------------------------------------------------------------------ loop

    def fit(self, stop_at: int | None = None, resume: bool = True) -> list[dict]:
        """Train to cfg.steps (or stop after step `stop_at`, checkpointing, as if killed)."""
        cfg = self.cfg
        if resume and self.try_resume():
            print(f"[{self.name}] resumed at step {self.step}")
        # redirected to a file, a bar redraw is a line: redraw rarely there
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.name,
            disable=not cfg.progress,
            dynamic_ncols=True,
            leave=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )
        t_last, seen = time.perf_counter(), 0
        while self.step < cfg.steps:
            self.model.train()
            lr = cosine_lr(self.step, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            logs_acc: dict = {}
            if self.dist is not None:  # dropout etc.: a stream that any world size restores
                seq = np.random.SeedSequence([cfg.seed, self.step, self.dist.rank])
                torch.manual_seed(int(seq.generate_state(1, np.uint64)[0]) % 2**63)
            for micro in range(cfg.grad_accum):
                if self.dist is None:
                    with torch.autocast(
                        self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                    ):
                        loss, logs, n = self.loss(self.step, micro)
                    self.scaler.scale(loss / cfg.grad_accum).backward()
                else:
                    loss, logs, n = self._dist_micro(micro)
                seen += n
                for k, v in logs.items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + float(v) / cfg.grad_accum
            if self.dist is not None:  # each rank logged its share: the sums are the losses
                logs_acc = D.all_sum(logs_acc)
            self.last_logs = logs_acc
            if cfg.clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.step += 1
            self.after_step(self.step)
            now = time.perf_counter()
            if now - t_last > 1.0 or self.step == cfg.steps:
                bar.set_postfix(
                    {
                        **{k: f"{v:.3g}" for k, v in logs_acc.items()},
                        "lr": f"{lr:.2g}",
                        "samples/s": f"{seen / (now - t_last):.0f}",
                    }
                )
                t_last, seen = now, 0
            bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._log_eval()
            if stop_at is not None and self.step >= stop_at:
                self.save()
                bar.close()
                return self.history
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save()
        bar.close()
        self.finish()
        self._log_eval()
        self.save()
        self.export()
        return self.history

    def _dist_micro(self, micro: int):
        """One micro-batch on this rank: its share of the global loss (see `loss`), scaled by
        the world size because DDP / FSDP average the ranks' gradients."""
        last = micro == self.cfg.grad_accum - 1
        with D.set_grad_sync(self.wrapped, self.dist, last):
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                loss, logs, n = self.wrapped(self.loss, self.step, micro)
            self.scaler.scale(loss * (self.dist.world / self.cfg.grad_accum)).backward()
        return loss, logs, n

    def _log_eval(self) -> None:
        self.model.eval()
        with torch.no_grad():
            # distributed: every rank evaluates (the forward gathers shards), rank 0 logs
            res = {
                "step": self.step,
                **(self.evaluate() if self.wrapped is None else self.wrapped(self.evaluate)),
            }
        if self.dist is not None and self.dist.mode == "fsdp":
            self.wrapped.reshard()  # a forward without backward leaves the root unsharded
        self.model.train()
        self.history.append(res)
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        if self.cfg.progress:
            tqdm.write(f"[{self.name}] eval {json.dumps(res)}")
