"""The fused perturbation pass as one Triton kernel launch per dtype over every weight tensor.

Each program handles BLOCK consecutive elements of one tensor: it looks the tensor up in a pointer table,
generates that block's z in registers (philox-v1, `philox.py`: one Philox4x32-10 call yields four normals),
reads each weight once, computes `mult * base + alpha * z` in float32 (base = the weight with its current
perturbation `pre * z` removed, rounded back onto the weight's dtype grid) and writes it once, rounded to
nearest or, for bf16 updates, stochastically. Tables are built once per list of tensors and reused.

On the GPU, log, sin and cos are the hardware approximations (MUFU): the noise then differs from the
reference by up to ~3e-5 (measured 2.2e-5 over 5M draws) but the pass runs 1.6x faster (Llama-1B-sized bf16
weights on an H100: 2.5 ms instead of 4.0 ms; a plain scaled copy in Triton takes 1.9 ms). Every pass of a
step uses the same kernel, so perturbation and restore still cancel exactly. Philox itself stays exact.

Set TRITON_INTERPRET=1 before the first import to run the kernel on CPU tensors (tests do this); the
interpreter uses the precise functions.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from zolightning.optim.kernels.philox import ROUNDS

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU installs: the PyTorch reference path is used
    triton = None

BLOCK = 2048
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TL_DTYPES = {}


def by_bits(dtype: torch.dtype) -> bool:
    """Whether the kernels round float32 to `dtype` on the bits (bf16 under the interpreter: see `narrow`)."""
    return INTERPRET and dtype == torch.bfloat16


class _Known:
    """What was worked out for one list of tensors: valid while they are the same objects (weak references:
    ids of dead tensors are reused) at the same storage addresses. A ZO step asks three times per step about
    the same few hundred tensors, and the per-tensor checks cost SmolLM2 about 2 ms of host time per step
    (py-spy, docs/benchmarks.md)."""

    def __init__(self, params: Sequence[Tensor], pointers: list[int]):
        self.refs, self.pointers = [weakref.ref(p) for p in params], pointers
        self.usable: bool | None = None
        self.plans: dict[tuple, dict] = {}

    def holds(self, params: Sequence[Tensor], pointers: list[int]) -> bool:
        return self.pointers == pointers and all(ref() is p for ref, p in zip(self.refs, params))


_known: OrderedDict[tuple[int, ...], _Known] = OrderedDict()


class TrustedTensors(list):
    """Tensors checked once by `trusted`: the passes of one optimizer step reuse that check."""

    __slots__ = ("known",)


def trusted(params: Sequence[Tensor]) -> TrustedTensors:
    """`params` as a list whose launch tables and usability are looked up now, once. Make a new one whenever
    the tensors may have changed (an optimizer makes one per step)."""
    out = TrustedTensors(params)
    out.known = _lookup(params)
    return out


def _lookup(params: Sequence[Tensor]) -> _Known:
    if type(params) is TrustedTensors:
        return params.known
    key = tuple(map(id, params))
    pointers = list(map(Tensor.data_ptr, params))
    known = _known.get(key)
    if known is None or not known.holds(params, pointers):
        known = _known[key] = _Known(params, pointers)
        if len(_known) > 8:  # a few lists per optimizer; views made per call come and go
            _known.popitem(last=False)
    _known.move_to_end(key)  # least recently used goes first: per-call views do not push out a step's list
    return known


def usable(params: Sequence[Tensor]) -> bool:
    """Whether `shift` can run on these tensors: Triton present, one CUDA device (or interpreting),
    contiguous tensors (the kernel addresses them flat) of float32, bfloat16 or float16."""
    if triton is None or not params:
        return False
    known = _lookup(params)
    if known.usable is None:
        known.usable = _usable(params)
    return known.usable


def _usable(params: Sequence[Tensor]) -> bool:
    devices = {p.device for p in params}
    if len(devices) != 1 or not (next(iter(devices)).type == "cuda" or INTERPRET):
        return False
    return all(p.is_contiguous() and p.dtype in TL_DTYPES for p in params)


if triton is not None:
    TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def philox_jit(k0, k1, c0, c1, c2, c3, ROUNDS: tl.constexpr):
        for _ in tl.static_range(ROUNDS):
            hi0 = tl.umulhi(0xD2511F53, c0)
            hi1 = tl.umulhi(0xCD9E8D57, c2)
            lo0 = c0 * 0xD2511F53
            lo1 = c2 * 0xCD9E8D57
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        return c0, c1, c2, c3

    @triton.jit
    def narrow(x, DTYPE: tl.constexpr, BY_BITS: tl.constexpr):
        # x (float32) to DTYPE, to nearest even. The GPU's conversion does this; Triton's interpreter truncates
        # bf16, so under it (BY_BITS) the rounding is done on the bits: the tests then see the GPU's numbers.
        if BY_BITS:
            bits = x.to(tl.uint32, bitcast=True)
            x = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        return x.to(DTYPE)

    @triton.jit
    def program_block(pointers, program_tensor, program_start, numels, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        # every kernel's program: its tensor t, the block's first element, the weights' address, offsets and mask
        pid = tl.program_id(0)
        t = tl.load(program_tensor + pid)
        start = tl.load(program_start + pid)
        offsets = start + tl.arange(0, BLOCK).to(tl.int64)
        inside = offsets < tl.load(numels + t)
        return t, start, tl.load(pointers + t).to(tl.pointer_type(DTYPE)), offsets, inside

    @triton.jit
    def seed_words(both):
        # a 64-bit seed read from memory as Philox's two key words
        return (both & 0xFFFFFFFF).to(tl.uint32), ((both >> 32) & 0xFFFFFFFF).to(tl.uint32)

    @triton.jit
    def uniform_jit(x):
        return ((x >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)

    @triton.jit
    def box_muller_jit(u0, u1, FAST: tl.constexpr):
        angle = 6.283185307179586 * u1
        if FAST:  # -2 ln u = -2 ln(2) log2(u)
            radius = tl.sqrt(-1.3862943611198906 * libdevice.fast_log2f(u0))
            return radius * libdevice.fast_cosf(angle), radius * libdevice.fast_sinf(angle)
        else:
            radius = tl.sqrt(-2.0 * tl.log(u0))
            return radius * tl.cos(angle), radius * tl.sin(angle)

    @triton.jit
    def _interleave4(a, b, c, d):
        # element 4r + i takes the i-th value of counter r
        return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))

    @triton.jit
    def _counters(q, key):
        # Philox counter words of the groups of 4 elements q of tensor `key`: (q low, q high, key)
        c0 = (q & 0xFFFFFFFF).to(tl.uint32)
        return c0, (q >> 32).to(tl.uint32), tl.zeros_like(c0) + key

    @triton.jit
    def normals(k0, k1, q, key, FAST: tl.constexpr, ROUNDS: tl.constexpr):
        # z of elements 4q .. 4q + 3 of tensor `key`, interleaved: the one noise definition of every kernel
        c0, c1, c2 = _counters(q, key)
        x0, x1, x2, x3 = philox_jit(k0, k1, c0, c1, c2, tl.zeros_like(c0), ROUNDS)
        n0, n1 = box_muller_jit(uniform_jit(x0), uniform_jit(x1), FAST)
        n2, n3 = box_muller_jit(uniform_jit(x2), uniform_jit(x3), FAST)
        return _interleave4(n0, n1, n2, n3)

    @triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
    def _shift_kernel(
        pointers, program_tensor, program_start, numels, keys, firsts, pre, alpha, mult, seed_lo, seed_hi, seed_at,
        partials, DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr, STATS: tl.constexpr, BLOCK: tl.constexpr,
        FAST: tl.constexpr, ROUNDS: tl.constexpr, SEED_IN_MEMORY: tl.constexpr, BY_BITS: tl.constexpr,
    ):  # fmt: skip
        t, start, weights, offsets, inside = program_block(
            pointers, program_tensor, program_start, numels, DTYPE, BLOCK
        )
        key = tl.load(keys + t).to(tl.uint32)
        if SEED_IN_MEMORY:  # a CUDA graph replays one launch for every step: the seed is read, not baked in
            k0, k1 = seed_words(tl.load(seed_at))
        else:
            k0 = seed_lo.to(tl.uint32)
            k1 = seed_hi.to(tl.uint32)
        # z of element i is that of element firsts[t] + i of the full tensor (shards; a multiple of 4)
        q = (tl.load(firsts + t) + start) // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
        z = normals(k0, k1, q, key, FAST, ROUNDS)

        w = tl.load(weights + offsets, mask=inside, other=0.0).to(tl.float32)
        base = narrow(w - tl.load(pre + t) * z, DTYPE, BY_BITS).to(tl.float32)
        value = tl.load(mult + t) * base + tl.load(alpha + t) * z
        if STOCHASTIC:  # counter word 3 = 1: bits apart from z's
            c0, c1, c2 = _counters(q, key)
            r0, r1, r2, r3 = philox_jit(k0, k1, c0, c1, c2, tl.zeros_like(c0) + 1, ROUNDS)
            bits = _interleave4(r0, r1, r2, r3) & 0xFFFF
            raw = (value.to(tl.uint32, bitcast=True) + bits) & 0xFFFF0000
            stored = raw.to(tl.float32, bitcast=True).to(DTYPE)
        else:
            stored = narrow(value, DTYPE, BY_BITS)
        tl.store(weights + offsets, stored, mask=inside)
        if STATS:  # this block's sum and sum of squares of the stored weights (next step's block features)
            v = tl.where(inside, stored.to(tl.float32), 0.0)
            pid = tl.program_id(0)
            tl.store(partials + 2 * pid, tl.sum(v, axis=0))
            tl.store(partials + 2 * pid + 1, tl.sum(v * v, axis=0))


@dataclass
class _Plan:
    """Device tables for one dtype's tensors: where each program works, and each tensor's address."""

    index: Tensor  # positions of these tensors in the full list (to pick their pre / alpha / mult)
    pointers: Tensor
    program_tensor: Tensor
    program_start: Tensor
    numels: Tensor
    keys: Tensor
    firsts: Tensor  # per tensor: the full tensor's flat index of its first element (shards), a multiple of 4
    programs: int
    first_program: Tensor  # per tensor: its first program, and one past its last (to sum block statistics)
    end_program: Tensor


_plans: dict[tuple, dict[torch.dtype, _Plan]] = {}


def device_table(values, device: torch.device) -> Tensor:
    """A host list or tensor copied to `device` without waiting for the GPU (pinned, non-blocking): plans are built
    while earlier passes still run (a streamed model builds them for each block it brings up)."""
    table = values if torch.is_tensor(values) else torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def plan_for(params: Sequence[Tensor], keys: Sequence[int], firsts: Sequence[int]) -> dict[torch.dtype, _Plan]:
    known, setting = _lookup(params), (tuple(keys), tuple(firsts))
    if setting not in known.plans:
        known.plans[setting] = _build_plan(params, keys, firsts)
    return known.plans[setting]


def _build_plan(params: Sequence[Tensor], keys: Sequence[int], firsts: Sequence[int]) -> dict[torch.dtype, _Plan]:
    signature = tuple((p.data_ptr(), p.numel(), p.dtype) for p in params) + tuple(keys) + tuple(firsts)
    if signature not in _plans:
        device = params[0].device
        plans = {}
        for dtype in dict.fromkeys(p.dtype for p in params):
            if dtype not in TL_DTYPES:
                raise TypeError(f"the fused perturbation supports float32, bfloat16, float16, not {dtype}")
            index = [i for i, p in enumerate(params) if p.dtype == dtype]
            numels = torch.tensor([params[i].numel() for i in index], dtype=torch.int64)
            counts = (numels + BLOCK - 1) // BLOCK
            program_tensor = torch.repeat_interleave(torch.arange(len(index), dtype=torch.int32), counts)
            first = torch.cumsum(counts, 0) - counts
            program_start = (torch.arange(int(counts.sum())) - first[program_tensor.long()]) * BLOCK
            plans[dtype] = _Plan(
                device_table(index, device),
                device_table([params[i].data_ptr() for i in index], device),
                device_table(program_tensor, device),
                device_table(program_start, device),
                device_table(numels, device),
                device_table([keys[i] for i in index], device),
                device_table([firsts[i] if firsts else 0 for i in index], device),
                int(counts.sum()),
                device_table(first, device),
                device_table(first + counts, device),
            )
        if len(_plans) > 4096:  # tensors re-allocated many times: drop stale tables (one per tensor is normal)
            _plans.clear()
        _plans[signature] = plans
    return _plans[signature]


def shift(
    params: Sequence[Tensor],
    keys: Sequence[int],
    seed: int | Tensor,
    pre: Tensor,
    alpha: Tensor,
    mult: Tensor,
    stochastic_rounding: bool = False,
    statistics: Tensor | None = None,
    firsts: Sequence[int] | None = None,
) -> None:
    """In place, one launch per dtype: tensor i <- mult_i * round(w - pre_i z_i) + alpha_i z_i.

    `seed` may be a 0-dim int64 tensor on the tensors' device (read by the kernel: `step_graphs.py`).
    `firsts[i]` (shards): tensor i holds the full tensor's elements from that flat index on; it must be a
    multiple of 4 (one Philox call yields the normals of 4 consecutive elements; see `aligned`).

    With `statistics` (float64 [n, 2]), row i receives (sum, sum of squares) of tensor i as written: each
    program writes its block's two float32 sums, and blocks are added in a fixed order (float64 prefix sums,
    no atomics), so the result is deterministic.
    """
    firsts = tuple(firsts or ())  # empty: whole tensors (the plan fills in zeros)
    if any(f % 4 for f in firsts):
        raise ValueError(f"shard offsets must be multiples of 4 for the fused pass, got {firsts}")
    seed_arguments = (0, 0, seed) if torch.is_tensor(seed) else (seed & 0xFFFFFFFF, seed >> 32, pre)
    for dtype, plan in plan_for(params, keys, firsts).items():
        whole = plan.index.numel() == len(params)
        per_tensor = [v if whole else v.index_select(0, plan.index) for v in (pre, alpha, mult)]
        partials = None if statistics is None else torch.empty(plan.programs, 2, device=pre.device)
        _shift_kernel[(plan.programs,)](
            plan.pointers, plan.program_tensor, plan.program_start, plan.numels, plan.keys, plan.firsts,
            *(v.float().contiguous() for v in per_tensor),
            *seed_arguments, partials if partials is not None else pre,
            DTYPE=TL_DTYPES[dtype], STOCHASTIC=stochastic_rounding and dtype == torch.bfloat16,
            STATS=partials is not None, BLOCK=BLOCK, FAST=not INTERPRET, ROUNDS=ROUNDS,
            SEED_IN_MEMORY=torch.is_tensor(seed), BY_BITS=by_bits(dtype), num_warps=8,
        )  # fmt: skip
        if partials is not None:
            running = torch.cat([partials.new_zeros(1, 2, dtype=torch.float64), partials.double().cumsum(0)])
            sums = running[plan.end_program] - running[plan.first_program]
            statistics.index_copy_(0, plan.index, sums)
