"""Measurement helpers shared by the GPU benchmarks: batches to a device, median wall time, peak memory."""

from __future__ import annotations

import statistics
import time

import torch


def to_device(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup`, synchronising the GPU around each."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn) -> float:
    """Peak allocated GPU memory (MiB) during one call of `fn()`."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20
