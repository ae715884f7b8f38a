"""Counter-based Gaussian noise: z[j] of tensor `key` at step seed `seed` is a pure function of (seed, key, j).

The definition ("philox-v1"), shared by the fused GPU kernel (`fused.py`) and this reference:

* Philox4x32-10 with key (seed mod 2^32, seed >> 32) and counter (q mod 2^32, q >> 32, key, 0), q = j // 4,
  gives four 32-bit words x0..x3;
* each word becomes a uniform in (0, 1) exactly representable in float32: u = ((x >> 8) + 0.5) / 2^24;
* Box-Muller turns (u0, u1) and (u2, u3) into four standard normals n0..n3 = r cos t, r sin t, ...;
* element j takes n_(j mod 4).

Because z depends on the element's index and not on a generator's position, any tensor order, any split
of a tensor into pieces (sharding) and any launch layout give the same z. This module computes it with
int64 tensor arithmetic (any device, no Triton); the kernel computes it in registers. They agree to float32
rounding of the transcendental functions (a few ulp), not bitwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
TWO_PI = 2 * math.pi


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit halves of a * b for a 32-bit constant a and uint32 values held in int64."""
    product = b * a  # < 2^64: wraps in int64, but both halves are recovered exactly by shifts and masks
    return (product >> 32) & MASK32, product & MASK32


def philox4x32(seed: int, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on counters held as int64 tensors in [0, 2^32); returns four words in the same form."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def uniform(x: Tensor) -> Tensor:
    """32-bit words -> float32 uniforms in (0, 1), each exactly representable (24 bits)."""
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)


def box_muller(u0: Tensor, u1: Tensor) -> tuple[Tensor, Tensor]:
    radius = torch.sqrt(-2.0 * torch.log(u0))
    angle = TWO_PI * u1
    return radius * torch.cos(angle), radius * torch.sin(angle)


def philox_normal(seed: int, key: int, numel: int, start: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """z[start : start + numel] of tensor `key` (flat, float32): the reference definition."""
    if not 0 <= key <= MASK32 or not 0 <= seed < 2**64:
        raise ValueError(f"need 0 <= key < 2^32 and 0 <= seed < 2^64, got key={key}, seed={seed}")
    j = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    q = j // 4
    words = philox4x32(seed, q & MASK32, q >> 32, torch.full_like(q, key), torch.zeros_like(q))
    n0, n1 = box_muller(uniform(words[0]), uniform(words[1]))
    n2, n3 = box_muller(uniform(words[2]), uniform(words[3]))
    normals = torch.stack([n0, n1, n2, n3])  # [4, numel]: row j mod 4 holds element j's value
    return normals.gather(0, (j % 4)[None]).squeeze(0)


def tensor_key(name: str) -> int:
    """A parameter's noise key from its name (stable across runs, orders and processes)."""
    import zlib

    return zlib.crc32(name.encode())
