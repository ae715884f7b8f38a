"""What a user of `zolightning fit` waits for: time to the first step, steady steps/s, validation, compilation."""

from __future__ import annotations

import time

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # steps run ahead of the host: wait for the GPU before reading a clock
        torch.cuda.synchronize(device)


class FitTimer:
    """Wall-clock marks of one fit. Steady throughput excludes the first step (compilation, warm-up) and
    the time spent validating in between."""

    def __init__(self):
        self.fit_start: float | None = None
        self.first_step_end: float | None = None
        self.first_step = 0
        self.compile_seconds = 0.0
        self.val_seconds_total = 0.0
        self._val_start: float | None = None

    def fit_started(self) -> None:
        self.fit_start = time.perf_counter()

    def step_done(self, step: int) -> float | None:
        """Seconds from the fit's start to this first step's end (None after the first)."""
        if self.first_step_end is not None or self.fit_start is None:
            return None
        self.first_step_end, self.first_step = time.perf_counter(), step
        self.val_seconds_total = 0.0  # validation after the first step counts against throughput
        return self.first_step_end - self.fit_start

    def validation_started(self, device: torch.device) -> None:
        _synchronize(device)
        self._val_start = time.perf_counter()

    def validation_ended(self, device: torch.device) -> float:
        _synchronize(device)
        seconds = time.perf_counter() - (self._val_start or time.perf_counter())
        self.val_seconds_total += seconds
        return seconds

    def steady_steps_per_second(self, step: int, device: torch.device) -> float | None:
        if self.first_step_end is None or step <= self.first_step:
            return None
        _synchronize(device)
        training = time.perf_counter() - self.first_step_end - self.val_seconds_total
        return (step - self.first_step) / max(training, 1e-9)
