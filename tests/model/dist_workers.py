"""Functions the multi-process tests run on each rank (importable by spawned processes)."""

from __future__ import annotations

import json

from small_trainer import gen_trainer, make_small_data

# the comparison recipe: no dropout (ranks draw their own dropout masks), 2 micro-batches
TRAIN = {"steps": 6, "batch_size": 6, "grad_accum": 2, "ckpt_every": 0}


def train_generator(info, tok_path, out, stop_at=None, train=None):
    """A small generator trained on this rank; rank 0 writes the per-step losses."""
    tr = gen_trainer(make_small_data(tok_path), out, dropout=0.0, train={**TRAIN, **(train or {})},
                     dist=info)  # fmt: skip
    losses = []
    tr.after_step = lambda step: losses.append(dict(tr.last_logs))
    tr.fit(stop_at=stop_at)
    if info.is_main:
        with open(f"{out}/losses-{tr.step}.json", "w") as f:
            json.dump(losses, f)
