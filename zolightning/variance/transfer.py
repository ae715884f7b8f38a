"""Re-target a learned optimizer to a model of the same family but another depth (by relative layer depth).

Until a model has its own meta-trained file, the networks of a related model can stand in: block
`model.layers.L.<role>` of the target takes the network of the source's layer round(L * (S-1) / (T-1))
with the same role; blocks outside the layers (embedding, final norm, head) match by name. The result
is labelled as transferred in its provenance; it is a starting point, not a meta-trained optimizer.
"""

from __future__ import annotations

import re

from zolightning.variance.file_format import LearnedOptimizerFile, OptimizerFileError

_LAYER = re.compile(r"^(?P<prefix>.*?\.)(?P<index>\d+)(?P<role>\..+)$")


def _split(name: str) -> tuple[str, int | None, str]:
    match = _LAYER.match(name)
    if not match:
        return name, None, ""
    return match["prefix"], int(match["index"]), match["role"]


def transfer(
    source: LearnedOptimizerFile,
    target: list[tuple[str, tuple[int, ...]]],
    base_model: str,
    effective_sizes: list[int] | None = None,
) -> LearnedOptimizerFile:
    """A file for `target` (name, shape) blocks, each network copied from the matching source block."""
    source_layers = [i for _, i, _ in map(_split, source.names) if i is not None]
    target_layers = [i for _, i, _ in (_split(n) for n, _ in target) if i is not None]
    s_last, t_last = max(source_layers, default=0), max(target_layers, default=0)
    picks = []
    for name, _ in target:
        prefix, index, role = _split(name)
        wanted = name if index is None else f"{prefix}{round(index * s_last / max(t_last, 1))}{role}"
        if wanted not in source.names:
            raise OptimizerFileError(f"no source network for {name!r} (looked for {wanted!r})")
        picks.append(wanted)
    return LearnedOptimizerFile(
        source.nets_for(picks),
        [n for n, _ in target],
        [tuple(s) for _, s in target],
        effective_sizes or [None] * len(target),
        base_model,
        provenance={
            "transferred_from": source.base_model,
            "source_provenance": source.provenance,
            "rule": "same role, relative layer depth",
        },
    )
