"""The units a streamed model is moved and perturbed by, found on any Hugging Face decoder, and the two-branch call.

A unit is a module whose weights travel to the GPU together: each decoder layer (the longest `nn.ModuleList` of one
layer class: `model.layers`, `transformer.h`, `decoder.layers`), and each other module that holds weights directly
(the embeddings, the final norm, the LM head). No architecture is rewritten: a unit's `forward` is wrapped on the
instance (its class, hooks and state-dict keys untouched), and the wrapper hands each call to a runner.

The two-branch call is how both perturbed forwards run while a unit is resident (ZO2's schedule): the batch enters
the model twice over, rows [0, B) for θ + εz and [B, 2B) for θ − εz; each unit splits its input in halves, runs the
first half, moves its weights to the other side and runs the second. Every tensor argument of at least two
dimensions whose first dimension is the input's is split (hidden states, 4-D attention masks, per-row rotary
tables); others (a 1-row rotary table, cache positions) are shared by both halves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass(eq=False)
class Unit:
    """A module streamed and perturbed as one piece.

    Attributes:
        name: the module's qualified name in the model.
        module: the module.
        tensors: every parameter the unit's forward reads (frozen ones too: LoRA's base weights travel with it).
        shared: trained tensors an earlier unit owns (tied embeddings): moved to this unit's side of each branch by
            their owner's passes.
    """

    name: str
    module: nn.Module
    tensors: list[nn.Parameter]
    shared: list[nn.Parameter] = field(default_factory=list)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(qualified name, list) of the model's decoder layers: its longest ModuleList of modules of one class."""
    best = None
    for name, module in model.named_modules():
        layered = isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1
        if layered and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def find_units(model: nn.Module) -> list[Unit]:
    """The model's units: its other weight-holding modules, then its decoder layers (streaming learns the order in
    which a forward enters them). Each parameter belongs to the first unit that reads it; later readers share it."""
    found = decoder_layers(model)
    if found is None:
        raise ValueError(f"zo_offload streams decoder layers, and {type(model).__name__} has no list of layers")
    prefix, layers = found
    inside = {id(p) for p in layers.parameters()}
    units = [
        Unit(name, module, list(module.parameters(recurse=False)))
        for name, module in model.named_modules()
        if any(id(p) not in inside for p in module.parameters(recurse=False))
    ]
    units += [Unit(f"{prefix}.{i}", layer, list(layer.parameters())) for i, layer in enumerate(layers)]
    owner: dict[int, Unit] = {}
    for unit in units:
        for p in unit.tensors:
            if id(p) in owner:
                unit.shared.append(p)
            else:
                owner[id(p)] = unit
    return units


def owned(unit: Unit) -> list[nn.Parameter]:
    """The unit's tensors whose passes it runs (those no earlier unit owns)."""
    shared = {id(p) for p in unit.shared}
    return [p for p in unit.tensors if id(p) not in shared]


Runner = Callable[[Unit, Callable, tuple, dict], object]


def install(units: list[Unit], runner: Runner) -> None:
    """Route every call of each unit through `runner(unit, forward, args, kwargs)`."""
    for unit in units:
        forward = unit.module.forward

        def routed(*args, _unit=unit, _forward=forward, **kwargs):
            return runner(_unit, _forward, args, kwargs)

        unit.module.forward = routed


def uninstall(units: list[Unit]) -> None:
    for unit in units:
        unit.module.__dict__.pop("forward", None)


def first_tensor(args: tuple, kwargs: dict) -> Tensor:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value):
            return value
    raise ValueError("a streamed unit was called without a tensor input")


def halves(args: tuple, kwargs: dict) -> tuple[tuple[tuple, dict], tuple[tuple, dict]]:
    """The call's arguments for each branch: tensors of ≥ 2 dims sharing the input's first dimension, halved."""
    rows = first_tensor(args, kwargs).shape[0]
    if rows % 2:
        raise ValueError(f"a two-branch call needs an even number of rows, got {rows}")

    def half(value, which: int):
        if torch.is_tensor(value) and value.dim() >= 2 and value.shape[0] == rows:
            return value[which * rows // 2 : (which + 1) * rows // 2]
        if isinstance(value, tuple) and value and all(torch.is_tensor(v) for v in value):
            return tuple(half(v, which) for v in value)  # rotary (cos, sin)
        return value

    return tuple(
        (tuple(half(a, which) for a in args), {k: half(v, which) for k, v in kwargs.items()}) for which in (0, 1)
    )


def joined(first, second):
    """The two branches' outputs as one: tensors concatenated on rows, tuples and model outputs field by field."""
    if torch.is_tensor(first):
        return torch.cat([first, second]) if first.dim() else first
    if isinstance(first, tuple):
        return type(first)(joined(a, b) for a, b in zip(first, second))
    if first is None:
        return None
    if hasattr(first, "keys"):  # a ModelOutput (a dict with attribute access)
        return type(first)(**{k: joined(first[k], second[k]) for k in first})
    return first
