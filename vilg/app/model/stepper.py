"""One decoding step of the unified transformer, run eagerly, compiled or as a CUDA graph.

A generation feeds one token per position through every layer, so at 1024 image tokens the
step's fixed costs (Python, op dispatch, checks, small allocations) decide the speed more than
its arithmetic. The step takes its position as a device tensor, so its arguments are the same
at every position: `torch.compile` builds one graph for all 1024 positions, and on CUDA the
whole step (every layer's kernels) is captured once and replayed, gpt-fast style.
"""

from __future__ import annotations

import torch

MODES = ("auto", "eager", "compile", "cuda-graph")


class Stepper:
    """`stepper(token, pos) -> logits` ([B] token ids at sequence position `pos`, an int) for one
    generation: fixed direction, source length T, caches and padding. `head` maps the final
    hidden state to what the loop needs (e.g. `model.image_logits`); it runs inside the
    compiled / captured region. mode "auto": a CUDA graph on a GPU, eager on the CPU.

    The returned tensor of "cuda-graph" is a static buffer, overwritten by the next call."""

    def __init__(self, model, direction: str, T: int, caches, text_lens=None, head=None,
                 mode: str = "auto"):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        device = caches[0][0].device
        if mode == "auto":
            mode = "cuda-graph" if device.type == "cuda" else "eager"
        if mode == "cuda-graph" and device.type != "cuda":
            raise ValueError("mode 'cuda-graph' needs the model on a CUDA device")
        self.mode, self.device = mode, device
        self.head = head or (lambda h: h)
        if hasattr(caches[0], "plan"):  # checked and planned now, not inside a traced step
            for cache, layout in zip(caches, model.step_layouts(direction, T)):
                cache.plan(layout, text_lens)

        def step(token, pos):
            return self.head(model.step(direction, token, pos, T, caches, text_lens))

        self._step = step
        self._pos = torch.zeros(1, dtype=torch.int64, device=device)
        self._fn = torch.compile(step, dynamic=False) if mode == "compile" else step
        self._graph = None

    @torch.no_grad()
    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        if self.mode == "eager":
            return self._fn(token, pos)
        self._pos.fill_(pos)  # on a GPU: a kernel with the value as its argument, no sync
        if self.mode == "compile":
            return self._fn(token, self._pos)
        if self._graph is None:
            self._capture(token)
        self._token.copy_(token, non_blocking=True)
        self._graph.replay()
        return self._out

    def _capture(self, token: torch.Tensor) -> None:
        # Warm up on a side stream (allocator pools, plans, lazy workspaces), then capture.
        # The warm-up writes the cache at the current position, which the replay rewrites.
        self._token = token.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(self._token, self._pos)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._step(self._token, self._pos)
