"""The update of the estimated rules, given each query's (seed, g): tensor by tensor, or one fused pass.

Reference (any device): each tensor's estimate ĝ = (1/q) Σ_j g_j s z_j is regenerated from the seeds, the rule's
`direction(group, ĝ, state)` gives d, and θ ← (1 − lr·wd)·θ − lr·d. Fused (philox on CUDA with Triton): the
restore of the last query and the rule's update in one pass over all queries' z (`kernels/fused_rules.py`), the
rule's parameters packed in the layout its `KernelRule` declares.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from zolightning.optim.kernels import fused_rules
from zolightning.optim.kernels.perturbation import add_normal


def estimates(engine, probes: list[tuple[int, float]], scales) -> Iterator[tuple[dict, Tensor, Tensor, Tensor]]:
    """(group, parameter, its part on this process, ĝ of that part in float32, or float64 for float64 weights) for
    every tensor, from each query's (seed, g). Unsharded, the part is the parameter.

    With philox noise each query's g z is added into the estimate by `add_normal`, in a scratch buffer that the
    next tensor of the same shape reuses: consume each estimate before the next."""
    if engine.directions is not None:
        yield from engine.directions.estimates(probes, scales)
        return
    scale_list = scales.tolist() if torch.is_tensor(scales) else scales
    parts = engine.parts()
    if engine.noise.counter_based:  # one host-to-device copy per query: every tensor's coefficient
        coefficients = [
            torch.tensor([g * s / len(probes) for s in scale_list], dtype=torch.float32).to(engine.device)
            for _, g in probes
        ]
    else:
        streams = [engine.noise.stream([p for _, p, _, _ in parts], seed) for seed, _ in probes]
    keys = engine.tensor_keys()
    for i, ((group, p, part, start), s) in enumerate(zip(parts, scale_list)):
        wide = torch.promote_types(p.dtype, torch.float32)
        if engine.noise.counter_based:
            grad = engine.scratch.zeros(part.shape, wide, part.device)
            for (seed, _), coefficient in zip(probes, coefficients):
                add_normal(grad, seed, keys[i], coefficient[i : i + 1], start)
            yield group, p, part, grad
            continue
        grad = torch.zeros(p.shape, dtype=wide, device=p.device)
        for (_, g), stream in zip(probes, streams):
            grad.add_(next(stream), alpha=g)
        yield group, p, part, grad.mul_(s / len(probes))


def reference_update(engine, rule, probes: list[tuple[int, float]], scales) -> None:
    """θ ← (1 − lr·wd)·θ − lr·d tensor by tensor, d = rule.direction(ĝ) (the weights are at θ)."""
    for group, p, part, grad in estimates(engine, probes, scales):
        state = engine.state[p]
        if rule.counts_steps:
            state["step"] = state.get("step", 0) + 1
        wide = part.detach().to(torch.promote_types(part.dtype, torch.float32))
        if group["weight_decay"]:
            wide.mul_(1.0 - group["lr"] * group["weight_decay"])
        wide.sub_(rule.direction(group, grad, state), alpha=group["lr"])
        part.copy_(wide)


def coefficients(engine, scales, g) -> Tensor:
    """[queries, tensors]: c_jt = g_j s_t / q, the weight of query j's z in tensor t's estimate, rounded once
    from float64 as the reference path's host product."""
    s = engine.vector(scales).double()
    if torch.is_tensor(g):
        product = g.double().reshape(-1, 1) * s
        return (product if g.numel() == 1 else product / g.numel()).float()
    rows = [s * (value / len(g)) for value in g]
    return (rows[0][None] if len(rows) == 1 else torch.stack(rows)).float()


def fused_update(engine, rule, seeds: list[int], scales, g, ok: Tensor | None) -> None:
    """The restore of the last query and the rule's update in one pass."""
    last = (engine.vector(scales) * (engine.offset * engine.eps))[None]  # only the last query's z is on the weights
    pre = last if len(seeds) == 1 else torch.cat([last.new_zeros(len(seeds) - 1, last.shape[1]), last])
    rule_pass(engine, rule, seeds, pre, coefficients(engine, scales, g), engine.lrs(), engine.decays(), ok)
    engine.offset = 0.0


def rule_pass(engine, rule, seeds: list[int], pre: Tensor, coefficient: Tensor, lrs, mults, ok, kernel=None) -> None:
    """One launch of the rule kernel over every tensor (`kernel`: another branch than the rule's own)."""
    kernel = kernel or rule.kernel_for(engine.groups)
    tensors = engine.params()  # this process's parts; the states are kept per parameter, shaped like the part
    states = []
    for (_, parameter), p in zip(engine.tensors(), tensors):
        state = engine.state[parameter]
        for name in kernel.states:
            if name not in state:
                state[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        states.append([state[name] for name in kernel.states])
    flag = engine.vector([1.0]) if ok is None else ok
    hyper = hyper_table(engine, rule, kernel).reshape(len(tensors), fused_rules.HYPER_WIDTH)
    starts = engine.starts()
    keys = engine.tensor_keys()
    fused_rules.update(tensors, states, kernel, seeds, pre, coefficient, lrs, mults, hyper, flag, keys, firsts=starts)


def _row(kernel, values: dict[str, float]) -> list[float]:
    return [values[name] for name in kernel.hyper] + [0.0] * (fused_rules.HYPER_WIDTH - len(kernel.hyper))


def hyper_table(engine, rule, kernel) -> Tensor:
    """Per tensor, the kernel's parameters in its declared order. Rules that count steps build it every step (one
    non-blocking copy); the others only when a group's options change."""
    if rule.counts_steps:
        rows, made = [], {}  # tensors of one group at one step share a row: built once (host time of a synced step)
        for index, p in engine.tensors_by_group():
            state = engine.state[p]
            step = state["step"] = state.get("step", 0) + 1  # this pass applies an update
            row = made.get((index, step))
            if row is None:
                row = made[(index, step)] = _row(kernel, rule.hyper(engine.groups[index], step))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float32).to(engine.device, non_blocking=True)
    rows = tuple(tuple(_row(kernel, rule.hyper(group, None))) for group in engine.groups)
    if engine.hyper_cache[0] != rows:
        values = [x for group, r in zip(engine.groups, rows) for _ in group["params"] for x in r]
        engine.hyper_cache = (rows, engine.vector(values))
    return engine.hyper_cache[1]
