"""Compile one decoder layer and run every layer of the stack through it ("regional" compilation).

Dynamo traces Python op by op and keeps no cache of its own: compiling SmolLM2's whole trunk means tracing 30
identical layers at every start, ~11 s of a warm start on the GPU machine even when inductor's caches hit
(docs/benchmarks.md). Here one function, `torch.compile(_call_layer)`, runs each layer; the layer's weights are
inputs of the compiled code (PyTorch inlines built-in modules), so the graph traced for the first layer serves the
other 29. What lies between layers (embedding, rotary tables, the attention mask, the final norm) stays eager;
on CUDA it is recorded in the same CUDA graph as the compiled layers (`fast_forward.CompiledTrunk._capture`).
Marking each layer with `torch.compiler.nested_compile_region` instead kept the trunk one graph but still traced
every layer (cold compile 52 -> 41 s, warm unchanged on the H100), hence the compiled call per layer.

The routing is installed only while `CompiledLayers.active()` is entered: the model's own eager and generation
forwards never see it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

ROWS, LENGTH = 0, 1  # the dimensions of a batch of tokens a shape plan may vary


def repeated_layers(trunk: nn.Module) -> nn.ModuleList | None:
    """The trunk's stack of identical layers (its first child list of >= 2 modules of one class), if any."""
    for child in trunk.children():
        if isinstance(child, nn.ModuleList) and len(child) >= 2 and len({type(m) for m in child}) == 1:
            return child
    return None


def _call_layer(forward, hidden_states: Tensor, *args, **kwargs):
    return forward(hidden_states, *args, **kwargs)


def _mark(tensor, dims: list[int]) -> None:
    if isinstance(tensor, Tensor):
        for dim in dims:
            if dim < tensor.dim():
                torch._dynamo.maybe_mark_dynamic(tensor, dim)


class CompiledLayers:
    """The trunk's repeated layers, each run by one compiled function while `active()`.

    Args:
        trunk: the model's trunk (e.g. `LlamaModel`); `repeated_layers(trunk)` must not be None.
        dynamic: the token dimensions (`ROWS`, `LENGTH`) that vary between calls: marked dynamic on the layers'
            inputs (hidden states, attention mask, position tables and ids), so one graph serves every shape.
    """

    def __init__(self, trunk: nn.Module, dynamic: list[int]):
        layers = repeated_layers(trunk)
        if layers is None:
            raise ValueError(f"{type(trunk).__name__} has no stack of identical layers to compile one of")
        self.layers, self.dynamic = layers, dynamic
        self.compiled = torch.compile(_call_layer)
        self._forwards = [self._routed(layer) for layer in layers]  # installed by active()

    def __len__(self) -> int:
        return len(self.layers)

    def _mark_dynamic(self, hidden_states: Tensor, kwargs: dict) -> None:
        rows, length = ROWS in self.dynamic, LENGTH in self.dynamic
        _mark(hidden_states, [ROWS] * rows + [LENGTH] * length)
        _mark(kwargs.get("attention_mask"), [0] * rows + [2, 3] * length)  # (rows, heads, queries, keys)
        if length:
            for table in kwargs.get("position_embeddings") or ():  # (1, length, head_dim) cos and sin
                _mark(table, [1])
            _mark(kwargs.get("position_ids"), [1])
            _mark(kwargs.get("cache_position"), [0])

    def _routed(self, layer: nn.Module):
        own_forward = type(layer).forward.__get__(layer)

        def forward(hidden_states, *args, **kwargs):
            self._mark_dynamic(hidden_states, kwargs)
            return self.compiled(own_forward, hidden_states, *args, **kwargs)

        return forward

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside: every layer's forward is the compiled one (an instance attribute, removed on exit)."""
        for layer, forward in zip(self.layers, self._forwards):
            layer.forward = forward
        try:
            yield
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)


def is_routed(layer: nn.Module) -> bool:
    """Whether the layer's forward is currently routed through a compiled function."""
    return isinstance(layer.__dict__.get("forward"), types.FunctionType)
