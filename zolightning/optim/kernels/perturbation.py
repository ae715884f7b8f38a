"""One pass of the ZO step over all weights with counter-based noise: w <- mult * base + alpha * z.

`base` is the unperturbed weight recovered from the current one: base = round_to_dtype(w - pre * z), where
`pre` is the perturbation the weight currently carries. In float32 this is the usual in-place update. In
half precision the rounding matters: adding +eps z, -2 eps z, +eps z to bf16 weights leaves each step's
rounding errors behind (a random walk of ~0.4 ulp per step that swamps MeZO's tiny updates). Recovering
`base` by rounding w - pre z back onto the bf16 grid undoes the perturbation exactly whenever the rounding of
the perturbed value was below half an ulp of the original, which is nearly always; and the final update can
be rounded stochastically (unbiased), so updates smaller than an ulp still move the weights on average.

The arithmetic is float32 throughout. On CUDA with Triton the pass is one kernel launch per dtype over all
tensors (`fused.py`): z is generated in registers and every weight is read and written once. Elsewhere the
same definition runs tensor by tensor with PyTorch ops (`philox.py`), the reference of the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zolightning.optim.kernels.philox import MASK32, philox4x32, philox_normal

STOCHASTIC_ROUNDING_DTYPES = (torch.bfloat16,)


def rounding_bits(seed: int, key: int, numel: int, device: torch.device) -> Tensor:
    """16 random bits per element for stochastic rounding (Philox counter word 3 = 1 keeps them apart from z)."""
    j = torch.arange(numel, dtype=torch.int64, device=device)
    q = j // 4
    words = philox4x32(seed, q & MASK32, q >> 32, torch.full_like(q, key), torch.ones_like(q))
    return torch.stack(words).gather(0, (j % 4)[None]).squeeze(0) & 0xFFFF


def round_bf16_stochastically(value: Tensor, bits: Tensor) -> Tensor:
    """float32 -> bfloat16, rounding up with probability equal to the dropped fraction (finite values)."""
    raw = value.view(torch.int32).to(torch.int64) & MASK32  # the float's bits as an unsigned word
    raw = (raw + bits) & 0xFFFF0000  # a carry out of the low 16 bits rounds the magnitude up
    raw = torch.where(raw >= 2**31, raw - 2**32, raw).to(torch.int32)
    return raw.view(torch.float32).to(torch.bfloat16)


def shift_reference(p: Tensor, z: Tensor, pre: float, alpha: float, mult: float, bits: Tensor | None = None) -> None:
    """In place: p <- mult * round_to_dtype(p - pre z) + alpha z, in float32 (float64 for float64 weights)."""
    wide = torch.promote_types(p.dtype, torch.float32)
    base, z = p.to(wide), z.to(wide)
    if pre != 0.0:
        base = (base - pre * z).to(p.dtype).to(wide)
    value = base * mult + alpha * z if mult != 1.0 else base + alpha * z
    if bits is not None and p.dtype == torch.bfloat16:
        p.copy_(round_bf16_stochastically(value, bits))
    else:
        p.copy_(value)


def shift(
    params: Sequence[Tensor],
    keys: Sequence[int],
    seed: int | Tensor,
    pre: Tensor,
    alpha: Tensor,
    mult: Tensor,
    stochastic_rounding: bool = False,
    statistics: Tensor | None = None,
    offsets: Sequence[int] | None = None,
) -> None:
    """One pass over `params`: tensor i <- mult_i * base_i + alpha_i * z_i (per-tensor vectors, float32).

    `seed`: an int, or a 0-dim int64 device tensor holding it (read by the fused kernel, for CUDA graphs).

    `offsets[i]`: the flat index in its full tensor of tensor i's first element, for shards (`shards.py`); the
    fused kernel takes offsets that are multiples of 4 (rows of any weight matrix whose width is), others run the
    reference.

    With `statistics` (float64 [n, 2] on the parameters' device), row i receives the sum and the sum of
    squares of tensor i as written: the next step's block features, without another pass over the weights.
    """
    from zolightning.optim.kernels import fused

    if fused.usable(params) and (offsets is None or not any(o % 4 for o in offsets)):
        fused.shift(params, keys, seed, pre, alpha, mult, stochastic_rounding, statistics, offsets)
        return
    seed = int(seed)  # a device seed (step graphs) is meant for the fused pass: here it is read once
    offsets = offsets or [0] * len(params)
    pre_l, alpha_l, mult_l = pre.tolist(), alpha.tolist(), mult.tolist()
    for i, (p, key) in enumerate(zip(params, keys)):
        z = philox_normal(seed, key, p.numel(), start=offsets[i], device=p.device).view(p.shape)
        bits = None
        if stochastic_rounding and p.dtype in STOCHASTIC_ROUNDING_DTYPES:
            bits = rounding_bits(seed, key, p.numel(), p.device).view(p.shape)
        shift_reference(p.data, z, pre_l[i], alpha_l[i], mult_l[i], bits)
        if statistics is not None:
            written = p.detach().double()
            statistics[i, 0], statistics[i, 1] = written.sum(), (written * written).sum()


def add_normal(out: Tensor, seed: int, key: int, alpha: Tensor, start: int = 0) -> Tensor:
    """In place: out += alpha * z, z the normals of tensor `key` as the passes draw them (`alpha`: 1 element), from
    element `start` of the full tensor on (a shard's part).

    On CUDA with Triton this is one fused launch (z made in registers, as in `shift`); elsewhere the PyTorch
    reference. The update rules that need z itself (the estimated and shaped optimizers) draw it here, so their
    updates follow the same z as their perturbation passes, at the speed of the fused pass. Pass buffers that
    live across steps (`Scratch`): the fused pass keeps a launch table per (buffer, key), and building one
    costs host-to-device copies that wait for the GPU.
    """
    from zolightning.optim.kernels import fused

    flat = out.view(-1)
    if fused.usable([flat]) and start % 4 == 0:
        zero = alpha.new_zeros(1)
        fused.shift([flat], [key], seed, zero, alpha.reshape(1), zero + 1.0, firsts=[start] if start else None)
        return out
    z = philox_normal(seed, key, flat.numel(), start=start, device=out.device).to(out.dtype)
    flat.add_(z * alpha.to(out.dtype))
    return out


class Scratch:
    """Reusable float buffers by (shape, dtype, device): the same memory, hence the same launch tables, every step."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def zeros(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device, slot: int = 0) -> Tensor:
        """A zeroed buffer; it is overwritten by the next call with the same (shape, dtype, device, slot)."""
        key = (tuple(shape), dtype, device, slot)
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(tuple(shape), dtype=dtype, device=device)
        return self._buffers[key].zero_()
