"""Gradient accumulation for a forward-only step: one ZO step over k micro-batches, under the same z.

With ZO, accumulation is exact and cheap: the loss at each perturbation is the weighted mean of the k micro-batches'
losses (each weighed by what its loss averages over, `scoring.batch_weight`), so k micro-batches of B give the
loss of one batch of kB, at the peak memory of one micro-batch. The micro-batches are buffered (token tensors,
small) and the step runs when the k-th arrives; the training stream is indexed by micro-batch, so a resumed run
re-reads the micro-batches of the step it stopped in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zolightning.forward.scoring import batch_weight


class MicroBatches:
    """Collects the k micro-batches of each step (`accumulate_grad_batches`)."""

    def __init__(self, per_step: int):
        if per_step < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {per_step}")
        self.per_step = per_step
        self._held: list[dict] = []

    def add(self, batch: dict) -> list[dict] | None:
        """The step's micro-batches once `batch` completes them, else None (the step waits for more)."""
        self._held.append(batch)
        if len(self._held) < self.per_step:
            return None
        batches, self._held = self._held, []
        return batches


def mean_objective(objective: Callable[[dict], Tensor], batches: list[dict]) -> Tensor:
    """The objective of the batch the micro-batches make up: their values weighed by `batch_weight`."""
    if len(batches) == 1:
        return objective(batches[0])
    weights = [batch_weight(batch) for batch in batches]
    total = sum(weights)
    return torch.stack([objective(batch) * weight for batch, weight in zip(batches, weights)]).sum() / total
