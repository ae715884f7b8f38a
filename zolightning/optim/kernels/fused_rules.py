"""The estimated rules' restore-and-update as one fused pass: ZO-SGD (plain), momentum, sign and Adam.

With one query the estimate of tensor i is ĝ_i = c_i z_i (c_i = g s_i, `estimated.py`); with q, the sum of q such
terms, each z_j redrawn in the kernel from its query's seed. Either way a rule's whole update is elementwise in
(weight, the z_j, state). The reference path spends several passes per tensor on it (restore,
draw z into a buffer, update the state, update the weight) and a launch or more for each of them; this pass does
it in one launch per dtype over every tensor, like MeZO's restore-and-update (`fused.py`), with the same z:

    base = round(w − Σ_j pre_j·z_j)   the weight with its current perturbation removed (the restore pass)
    ĝ = Σ_j c_j·z_j                    the estimate
    d = rule(ĝ, state)              plain: ĝ; momentum: m ← μm + ĝ; sign: sign(ĝ); Adam: m, v, bias correction
    w ← mult·base − lr·d            mult = 1 − lr·wd (decoupled decay)

Its states are the reference path's (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, float32, one per weight), so
checkpoints move between the two paths. A device flag `ok` turns the pass into a plain restore with the states
untouched: a non-finite g is skipped without reading it on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from zolightning.optim.kernels import fused
from zolightning.optim.kernels.philox import ROUNDS

HYPER_WIDTH = 8  # per-tensor parameters a rule may pass the kernel


@dataclass(frozen=True)
class KernelRule:
    """One branch of the rule kernel: its code, the state buffers it reads and writes (float32, shaped like the
    weight) and the per-tensor parameters it reads, each in the order the kernel takes them. The one declaration of
    the kernel's layout: a rule names its values, the engine packs them in this order."""

    code: int
    states: tuple[str, ...] = ()
    hyper: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.hyper) > HYPER_WIDTH or len(self.states) > 2:
            raise ValueError(f"the rule kernel takes at most {HYPER_WIDTH} parameters and 2 states per tensor")


PLAIN = KernelRule(0)
MOMENTUM = KernelRule(1, ("momentum_buffer",), ("momentum",))
SIGN = KernelRule(2)
ADAM = KernelRule(
    3, ("exp_avg", "exp_avg_sq"), ("beta1", "1-beta1", "beta2", "1-beta2", "1-beta1^t", "1-beta2^t", "adam_eps")
)
NESTEROV = KernelRule(4, ("momentum_buffer",), ("momentum",))


def usable(params: Sequence[Tensor]) -> bool:
    """Whether the fused rule pass can run on these weights (those of the fused perturbation pass)."""
    return fused.usable(params)


if fused.triton is not None:
    import triton
    import triton.language as tl

    from zolightning.optim.kernels.fused import narrow, normals, program_block, seed_words

    @triton.jit(do_not_specialize=["seed_lo", "seed_hi", "tensors"])
    def _rule_kernel(
        pointers, first_states, second_states, program_tensor, program_start, numels, keys, firsts,
        pre, coefficient, lr, mult, hyper, ok, seed_lo, seed_hi, more_seeds, tensors,
        DTYPE: tl.constexpr, RULE: tl.constexpr, QUERIES: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr,
        ROUNDS: tl.constexpr, BY_BITS: tl.constexpr, HYPER_WIDTH: tl.constexpr,
    ):  # fmt: skip
        t, start, weights, offsets, inside = program_block(
            pointers, program_tensor, program_start, numels, DTYPE, BLOCK
        )
        key = tl.load(keys + t).to(tl.uint32)
        q = (tl.load(firsts + t) + start) // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)  # shards: from their offset
        z = normals(seed_lo.to(tl.uint32), seed_hi.to(tl.uint32), q, key, FAST, ROUNDS)  # the passes' z
        carried = tl.load(pre + t) * z  # the perturbation the weights carry now
        estimate = tl.load(coefficient + t) * z
        for j in tl.static_range(1, QUERIES):  # the other queries' z, in query order (as the reference sums)
            k0, k1 = seed_words(tl.load(more_seeds + j - 1))
            z = normals(k0, k1, q, key, FAST, ROUNDS)
            carried += tl.load(pre + j * tensors + t) * z
            estimate += tl.load(coefficient + j * tensors + t) * z

        go = tl.load(ok) != 0
        w = tl.load(weights + offsets, mask=inside, other=0.0).to(tl.float32)
        base = narrow(w - carried, DTYPE, BY_BITS).to(tl.float32)
        h = hyper + t * HYPER_WIDTH  # this tensor's parameters, in its KernelRule's order
        if RULE == 0:
            direction = estimate
        elif RULE == 1:
            m_at = tl.load(first_states + t).to(tl.pointer_type(tl.float32)) + offsets
            m_old = tl.load(m_at, mask=inside, other=0.0)
            m = tl.load(h) * m_old + estimate
            tl.store(m_at, tl.where(go, m, m_old), mask=inside)
            direction = m
        elif RULE == 2:
            direction = tl.where(estimate > 0, 1.0, tl.where(estimate < 0, -1.0, 0.0))
        elif RULE == 4:  # Nesterov: m <- mu m + g, d = g + mu m
            m_at = tl.load(first_states + t).to(tl.pointer_type(tl.float32)) + offsets
            m_old = tl.load(m_at, mask=inside, other=0.0)
            m = tl.load(h) * m_old + estimate
            tl.store(m_at, tl.where(go, m, m_old), mask=inside)
            direction = estimate + tl.load(h) * m
        else:
            m_at = tl.load(first_states + t).to(tl.pointer_type(tl.float32)) + offsets
            v_at = tl.load(second_states + t).to(tl.pointer_type(tl.float32)) + offsets
            m_old = tl.load(m_at, mask=inside, other=0.0)
            v_old = tl.load(v_at, mask=inside, other=0.0)
            m = m_old * tl.load(h) + estimate * tl.load(h + 1)
            v = v_old * tl.load(h + 2) + estimate * estimate * tl.load(h + 3)
            tl.store(m_at, tl.where(go, m, m_old), mask=inside)
            tl.store(v_at, tl.where(go, v, v_old), mask=inside)
            direction = (m / tl.load(h + 4)) / (tl.sqrt(v / tl.load(h + 5)) + tl.load(h + 6))
        value = tl.where(go, tl.load(mult + t) * base - tl.load(lr + t) * direction, base)
        tl.store(weights + offsets, narrow(value, DTYPE, BY_BITS), mask=inside)


_state_tables: dict[tuple, Tensor] = {}


def addresses(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """A device table of the tensors' addresses, built once per list of tensors."""
    signature = tuple(t.data_ptr() for t in tensors)
    if signature not in _state_tables:
        if len(_state_tables) > 4096:
            _state_tables.clear()
        _state_tables[signature] = fused.device_table(list(signature), device)
    return _state_tables[signature]


def update(
    params: Sequence[Tensor],
    states: Sequence[Sequence[Tensor]],
    rule: KernelRule,
    seed: int | Sequence[int],
    pre: Tensor,
    coefficient: Tensor,
    lr: Tensor,
    mult: Tensor,
    hyper: Tensor,
    ok: Tensor,
    keys: Sequence[int] | None = None,
    firsts: Sequence[int] | None = None,
) -> None:
    """In place, one launch per dtype: tensor i <- mult_i base_i − lr_i d_i, and its states (see the module doc).

    `states[i]`: tensor i's float32 state buffers in `rule.states` order; `pre`, `coefficient`, `lr`,
    `mult`: float32 per-tensor vectors; `hyper`: float32 [n, HYPER_WIDTH]; `ok`: one element, 0 = restore only.

    Several queries: `seed` lists their seeds and `pre`, `coefficient` are [queries, n]. Then
    base = round(w − Σ_j pre_j z_j) and ĝ = Σ_j coefficient_j z_j (z_j drawn from seed j).
    `keys[i]`: tensor i's noise key (default i), for a subset of the tensors a rule perturbs.
    `firsts[i]`: the flat index of tensor i's first element in its full tensor (shards; multiples of 4).
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    keys = list(range(len(params))) if keys is None else list(keys)
    wanted = len(rule.states)
    if any(len(s) != wanted for s in states):
        raise ValueError(f"rule {rule} takes {wanted} state tensors per weight")
    pre, coefficient = pre.reshape(len(seeds), -1), coefficient.reshape(len(seeds), -1)
    more_seeds = _seed_table(seeds[1:], pre.device) if len(seeds) > 1 else ok
    flag = ok.reshape(1).to(torch.int32)
    for dtype, plan in fused.plan_for(params, keys, tuple(firsts or ())).items():
        chosen = [i for i, p in enumerate(params) if p.dtype == dtype]  # the plan's tensors, read on the host
        whole = len(chosen) == len(params)
        per_tensor = [v if whole else v.index_select(0, plan.index) for v in (lr, mult, hyper)]
        per_query = [v if whole else v.index_select(1, plan.index) for v in (pre, coefficient)]
        tables = [addresses([states[i][j] for i in chosen], pre.device) for j in range(wanted)]
        tables += [plan.pointers] * (2 - wanted)  # unused by the rule: any valid pointer table
        _rule_kernel[(plan.programs,)](
            plan.pointers, *tables, plan.program_tensor, plan.program_start, plan.numels, plan.keys, plan.firsts,
            *(v.float().contiguous() for v in per_query), *(v.float().contiguous() for v in per_tensor), flag,
            seeds[0] & 0xFFFFFFFF, seeds[0] >> 32, more_seeds, len(chosen),
            DTYPE=fused.TL_DTYPES[dtype], RULE=rule.code, QUERIES=len(seeds), BLOCK=fused.BLOCK,
            HYPER_WIDTH=HYPER_WIDTH, FAST=not fused.INTERPRET, ROUNDS=ROUNDS, BY_BITS=fused.by_bits(dtype), num_warps=8,
        )  # fmt: skip


def _seed_table(seeds: Sequence[int], device: torch.device) -> Tensor:
    """The seeds as int64 on the device (as signed words: the kernel reads their two halves), copied without
    waiting for the GPU."""
    words = torch.tensor([s - (1 << 64) if s >= 1 << 63 else s for s in seeds], dtype=torch.int64)
    return (words.pin_memory() if device.type == "cuda" else words).to(device, non_blocking=True)
