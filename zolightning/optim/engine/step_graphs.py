"""Whole ZO steps as CUDA graphs: perturb, loss, perturb, loss, restore-and-update, replayed as one launch.

A fast SmolLM2 step is ~5 ms of GPU work spread over a few hundred kernels, and the host's work of queueing them
(three fused passes and their per-tensor vectors, two scoring forwards, the loss, the skip counters) took longer
than the GPU's: the fit was host-bound at about twice the isolated step (docs/benchmarks.md). Captured once per
batch layout, a step costs the host a few fills and copies and one replay.

What a graph reads at replay, and how it gets there:
- the step's seed, learning rates and weight-decay factors: device buffers (`seed`, `lr`, `mult`) filled before
  every step, graph or not, so that the eager and the replayed steps are the same computation;
- the batch: `bind(batch)` names, before each `optimizer.step(closure)`, the tensors that the closure reads.
  The first batch of a layout (its tensors' shapes and dtypes, and its other values) runs eagerly; the second is
  captured and the capture's tensors become the layout's static inputs: later batches are copied into them.
  The closure must read nothing else that changes between steps.
The weights are read and written in place at their addresses; give them new storage and the graphs are stale.

Not captured (eager, as before): steps without a bound batch, layouts past `limit`, and everything after a failed
capture (said once in the log). A replayed step does not run the closure, so Lightning's
`on_before_optimizer_step` hooks, which it calls after each closure, run only on eager steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from zolightning.optim.optimizer import ZOOptimizer

log = logging.getLogger(__name__)


def layout(batch: dict) -> Hashable | None:
    """What one graph serves: the tensors' shapes and dtypes and the other values; None if one is unhashable."""
    key = []
    for name, value in sorted(batch.items()):
        if torch.is_tensor(value):
            key.append((name, tuple(value.shape), value.dtype, value.device))
        elif isinstance(value, Hashable):
            key.append((name, value))
        else:
            return None
    return tuple(key)


class StepGraphs:
    """The CUDA graphs of one `ZOOptimizer`'s steps, one per batch layout (see the module docstring).

    Args:
        optimizer: MeZO's `ZOOptimizer` with `sync=False` whose weights live on one CUDA device.
        pool: a CUDA-graph memory pool to share (e.g. the compiled scoring forward's), or None for a new one.
        limit: at most this many layouts are captured; further ones run eagerly.
    """

    def __init__(self, optimizer: ZOOptimizer, pool=None, limit: int = 16):
        self.optimizer, self.pool, self.limit = optimizer, pool, limit
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        device = tensors[0].device
        self.capturable = device.type == "cuda"
        self.seed = torch.zeros((), dtype=torch.int64, device=device)
        self.lr = torch.zeros(len(tensors), dtype=torch.float64, device=device)
        self.mult = torch.ones(len(tensors), dtype=torch.float32, device=device)
        self._filled: tuple | None = None
        self._graphs: dict[Hashable, SimpleNamespace] = {}
        self._seen: set[Hashable] = set()
        self._batch: dict | None = None
        self.failure: str | None = None
        self.replays = 0
        self.eager_steps = 0

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def bind(self, batch: dict) -> None:
        """The tensors the next step's closure reads (the whole batch dict; non-tensor values join the layout)."""
        self._batch = batch

    def run(self, seed: int, scales, closure: Callable[[], Tensor]) -> Tensor:
        """One step: the `ZOOptimizer.device_step` summary, from a replay when the batch's layout has a graph."""
        self._fill(seed)
        batch, self._batch = self._batch, None
        key = layout(batch) if batch is not None and self.capturable and self.failure is None else None
        graph = self._graphs.get(key)
        if graph is None and key in self._seen and len(self._graphs) < self.limit:
            graph = self._capture(key, batch, scales, closure)
        if graph is None:
            if key is not None:
                self._seen.add(key)
            self.eager_steps += 1
            return self.optimizer.device_step(self.seed, scales, closure)
        names = list(graph.inputs)
        torch._foreach_copy_([graph.inputs[n] for n in names], [batch[n] for n in names])
        graph.graph.replay()
        self.replays += 1
        self.optimizer.num_forwards += graph.forwards
        return graph.summary.clone()  # the pool may reuse the graph's output memory in the next replay

    def _fill(self, seed: int) -> None:
        # The seed changes every step; lr only under a schedule. fill_ takes the value as a kernel argument:
        # unlike a host-to-device copy it neither waits for the GPU nor races with later host writes.
        self.seed.fill_(seed)
        groups = self.optimizer.param_groups
        values = tuple((g["lr"], 1.0 - g["lr"] * g["weight_decay"], len(g["params"])) for g in groups)
        if values == self._filled:
            return
        start = 0
        for lr, mult, count in values:
            self.lr[start : start + count].fill_(lr)
            self.mult[start : start + count].fill_(mult)
            start += count
        self._filled = values

    def _capture(self, key: Hashable, batch: dict, scales, closure: Callable[[], Tensor]) -> SimpleNamespace | None:
        optimizer = self.optimizer
        offset = optimizer.engine.offset
        optimizer.engine.skips.on_device(self.seed.device)  # the capture cannot create it from host numbers
        graph = torch.cuda.CUDAGraph()
        forwards = optimizer.num_forwards  # the capture records the closures without running them
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                summary = optimizer.device_step(self.seed, scales, closure)
        except Exception as error:  # noqa: BLE001 - anything the capture refuses: say so once, step eagerly
            optimizer.engine.offset, optimizer.num_forwards = offset, forwards
            self.failure = f"{type(error).__name__}: {error}"
            log.warning("capturing the ZO step as a CUDA graph failed, steps run eagerly from now on: %s", self.failure)
            return None
        self.pool = self.pool if self.pool is not None else graph.pool()
        inputs = {name: value for name, value in batch.items() if torch.is_tensor(value)}
        captured = SimpleNamespace(graph=graph, inputs=inputs, summary=summary)
        captured.forwards, optimizer.num_forwards = optimizer.num_forwards - forwards, forwards
        self._graphs[key] = captured
        log.info("ZO step captured as a CUDA graph for batch layout %d of at most %d", len(self._graphs), self.limit)
        return captured
