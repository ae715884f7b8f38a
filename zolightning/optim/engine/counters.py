"""What ZO steps count: skipped steps (without waiting for the GPU) and forward passes (the budget that
comparisons between rules hold equal: 2q a step for ZO-SGD and its family, 3 for HiZOO, 4-5 for Conserve)."""

from __future__ import annotations

import torch
from torch import Tensor


class SkipCounter:
    """Skipped steps in total and in a row; host integers, or a device tensor once a skip flag is a tensor
    (steps without host sync), so that counting never waits for the GPU. Reading does."""

    def __init__(self, total: int = 0, consecutive: int = 0):
        self._host, self._device = [total, consecutive], None

    def add(self, skipped: bool | Tensor) -> None:
        if torch.is_tensor(skipped):
            self.on_device(skipped.device)
            flag = skipped.to(torch.int64)
            # in place: a CUDA graph of the step (step_graphs.py) replays this update on the same memory
            self._device.copy_(torch.stack([self._device[0] + flag, (self._device[1] + 1) * flag]))
        elif self._device is not None:
            self.add(torch.tensor(skipped, device=self._device.device))
        else:
            self._host = [self._host[0] + skipped, (self._host[1] + 1) * skipped]

    def on_device(self, device: torch.device) -> None:
        """Count on `device` from now on (before a CUDA-graph capture, which cannot copy host values over)."""
        if self._device is None:
            self._device = torch.tensor(self._host, dtype=torch.int64, device=device)

    def _read(self) -> list[int]:
        return self._host if self._device is None else self._device.tolist()

    @property
    def total(self) -> int:
        return self._read()[0]

    @property
    def consecutive(self) -> int:
        return self._read()[1]


def count_forwards(optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """A step pre-hook: wraps the step's closure so that every rule's forwards are counted in
    `optimizer.num_forwards` where they happen (a replayed CUDA graph calls no closure: `StepGraphs` adds the count
    it captured instead)."""
    positional = len(args) > 1  # args[0] is the optimizer itself
    closure = args[1] if positional else kwargs.get("closure")
    if closure is None:
        return None  # step() raises its own error

    def counted():
        optimizer.num_forwards += optimizer.forwards_per_closure
        return closure()

    return ((args[0], counted, *args[2:]), kwargs) if positional else (args, {**kwargs, "closure": counted})
