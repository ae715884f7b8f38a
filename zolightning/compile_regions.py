"""Compile a decoder stack by tracing one layer: each layer's forward marked as a nested compile region.

Dynamo traces a model's Python op by op; for SmolLM2's 30 identical layers that tracing, not inductor, is most
of a warm start (inductor's caches hit, dynamo has none: ~15 s on the GPU machine, docs/benchmarks.md).
`torch.compiler.nested_compile_region` tells dynamo that a function is a repeated region: it is traced the
first time and stamped out for every later call whose inputs match (the layer's weights are inputs, so one
region serves all layers). The whole trunk stays one graph — one CUDA graph, the same padding and planning —
only its tracing gets shorter.

Outside `torch.compile` the mark is a no-op, so the model's eager and generation forwards run as before. The mark
is an instance attribute (`layer.forward`), nothing is changed on the layer's class.
"""

from __future__ import annotations

import types

import torch
from torch import nn

_REGIONS: dict[type, object] = {}  # one region per layer class: a region is reused only through the same function


def repeated_layers(trunk: nn.Module) -> nn.ModuleList | None:
    """The trunk's stack of identical layers (the first child list of >= 2 modules of one class), if any."""
    for child in trunk.children():
        if isinstance(child, nn.ModuleList) and len(child) >= 2 and len({type(m) for m in child}) == 1:
            return child
    return None


def _region_of(cls: type):
    if cls not in _REGIONS:
        _REGIONS[cls] = torch.compiler.nested_compile_region(cls.forward)
    return _REGIONS[cls]


def mark_layer_regions(trunk: nn.Module) -> int:
    """Mark each layer of the trunk's repeated stack as one nested compile region; the number of layers marked
    (0 when the trunk has no such stack; it then compiles as a whole, as before)."""
    layers = repeated_layers(trunk)
    if layers is None:
        return 0
    region = _region_of(type(layers[0]))
    for layer in layers:
        layer.forward = types.MethodType(region, layer)
    return len(layers)


def is_marked(layer: nn.Module) -> bool:
    """Whether the layer's forward is a compile region set by `mark_layer_regions`."""
    forward = layer.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _REGIONS.get(type(layer))
