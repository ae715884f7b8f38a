"""Per-step Gaussian directions z, regenerated on demand instead of stored.

z for step t is a function of (run seed, t) only: a private generator per device is re-seeded with
`step_seed(seed, t)` at the start of every pass over the parameters, which are walked in a fixed order.
Resuming needs no saved RNG state, every data-parallel rank draws the same z, and the global RNG
(shuffling, dropout) is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed for step `step` of a run seeded `seed`; nearby inputs give unrelated seeds."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64)) >> 1


class NoiseSource:
    """Standard normal directions for a fixed list of tensors, reproducible from a seed."""

    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def directions(self, params: Sequence[Tensor], seed: int) -> Iterator[Tensor]:
        """Yield z_i ~ N(0, I) in float32, one per tensor, in order; the same seed yields the same z."""
        seeded: set[torch.device] = set()
        for p in params:
            generator = self._generator(p.device)
            if p.device not in seeded:
                generator.manual_seed(seed)
                seeded.add(p.device)
            yield torch.randn(p.shape, generator=generator, device=p.device, dtype=torch.float32)
