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


class GeneratorNoise:
    """z from a seeded torch.Generator per device, tensor by tensor in walk order: MeZO's reference path.

    Passes add `alpha * z` to each tensor (relative moves); the restore after a perturbation is exact in float32 and
    float64 only (half-precision weights keep each pass's rounding: use `PhiloxNoise` there)."""

    name, definition, counter_based = "generator", "torch-generator", False

    def __init__(self) -> None:
        self._source = NoiseSource()  # generators cached per device, re-seeded by every pass

    def fuses(self, tensors: Sequence[Tensor]) -> bool:
        """Whether a fused Triton pass can run: never for generator noise (its z is a generator's stream)."""
        return False

    def stream(self, tensors: Sequence[Tensor], seed: int) -> Iterator[Tensor]:
        """Every tensor's z for `seed`, in order (a source of its own: several seeds' streams may interleave)."""
        return NoiseSource().directions(tensors, seed)

    def add(self, tensors: Sequence[Tensor], seed: int, alphas: Sequence[float | Tensor]) -> None:
        """One pass: tensor i += alphas[i] * z_i, with z regenerated from `seed`."""
        for p, z, alpha in zip(tensors, self._source.directions(tensors, seed), alphas):
            axpy(p, z, alpha)

    def normal(self, seed: int, index: int, shape: tuple[int, ...], device: torch.device, scratch=None, slot: int = 1,
               start: int = 0):  # fmt: skip
        """N(0, 1) of `shape` as a function of (seed, index) alone (shaped rules draw their factors with it)."""
        if start:
            raise ValueError("generator noise draws whole tensors; parts of sharded tensors need philox noise")
        generator = torch.Generator(device=device).manual_seed(step_seed(seed, index))
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


class PhiloxNoise:
    """Counter-based z (`kernels/philox.py`): element j of tensor i is a pure function of (seed, i, j), so any order,
    any sharding and one fused Triton kernel per pass give the same z. Where the fused pass cannot run (no CUDA, no
    Triton) the PyTorch reference of the same definition runs; `fuses` says which, decided once per tensor list."""

    name, definition, counter_based = "philox", "philox-v1", True

    def fuses(self, tensors: Sequence[Tensor]) -> bool:
        from zolightning.optim.kernels import fused

        return fused.usable(tensors)

    def normal(self, seed: int, index: int, shape: tuple[int, ...], device: torch.device, scratch=None, slot: int = 1,
               start: int = 0):  # fmt: skip
        """N(0, 1) of `shape` from tensor key `index` (elements `start` on), in a scratch buffer (`slot`) reused by
        the next such draw."""
        from zolightning.optim.kernels.perturbation import add_normal

        z = scratch.zeros(shape, torch.float32, device, slot)
        return add_normal(z, seed, index, torch.ones(1, device=device), start)


NOISES = {"generator": GeneratorNoise, "philox": PhiloxNoise}


def make_noise(kind: str) -> GeneratorNoise | PhiloxNoise:
    """The noise object of a kind's name (`generator`, `philox`): the one place the name is read."""
    if kind not in NOISES:
        raise ValueError(f"noise must be one of {tuple(NOISES)}, got {kind!r}")
    return NOISES[kind]()


def axpy(p: Tensor, z: Tensor, alpha: float | Tensor) -> None:
    """p += alpha * z with the arithmetic in float32 (or p's wider dtype) and one rounding.

    `alpha` may be a 0-d device tensor: addcmul reads it on the device, so no host sync is needed.
    """
    wide = p.dtype in (torch.float32, torch.float64)
    target = p if wide else p.float()
    if torch.is_tensor(alpha):
        target.addcmul_(z, alpha)
    else:
        target.add_(z, alpha=alpha)
    if not wide:
        p.copy_(target)
