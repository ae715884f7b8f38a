"""The learned-optimizer file: safetensors, one entry per block network, JSON metadata.

Entries are named like the reference release's Sequentials, keyed by the block's parameter name:
`<name>.0.weight` [H, 5], `<name>.0.bias` [H], `<name>.2.weight` [1, H], `<name>.2.bias` [1].
Metadata (strings): format_version, base_model, blocks (JSON list of {name, shape, effective_size} in
walk order), feature_order, hidden, provenance (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zolightning.variance.networks import FEATURES, BlockVarianceNets

FORMAT_VERSION = "1"


class OptimizerFileError(ValueError):
    """A learned-optimizer file is unreadable or does not match the model it is loaded onto."""


@dataclass
class LearnedOptimizerFile:
    """Networks in walk order plus what they were trained for."""

    nets: BlockVarianceNets
    names: list[str]
    shapes: list[tuple[int, ...] | None]
    effective_sizes: list[int | None]
    base_model: str = "unknown"
    provenance: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        tensors = {}
        for name, net in zip(self.names, self.nets.as_sequentials()):
            for key, value in net.state_dict().items():
                tensors[f"{name}.{key}"] = value.detach().float().contiguous().cpu()
        blocks = [
            {"name": n, "shape": list(s) if s is not None else None, "effective_size": d}
            for n, s, d in zip(self.names, self.shapes, self.effective_sizes)
        ]
        metadata = {
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "blocks": json.dumps(blocks),
            "feature_order": json.dumps(list(FEATURES)),
            "hidden": str(self.nets.hidden),
            "provenance": json.dumps(self.provenance),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> LearnedOptimizerFile:
        path = Path(path)
        if not path.is_file():
            raise OptimizerFileError(f"learned-optimizer file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as err:  # safetensors raises its own error types
            raise OptimizerFileError(f"{path}: not a safetensors file ({err})") from err
        if metadata.get("format_version") != FORMAT_VERSION:
            raise OptimizerFileError(
                f"{path}: format_version {metadata.get('format_version')!r}, this zolightning reads {FORMAT_VERSION!r}"
            )
        if json.loads(metadata["feature_order"]) != list(FEATURES):
            raise OptimizerFileError(f"{path}: feature order {metadata['feature_order']} is not {list(FEATURES)}")
        blocks = json.loads(metadata["blocks"])
        nets = BlockVarianceNets(len(blocks), int(metadata["hidden"]))
        with torch.no_grad():
            for i, block in enumerate(blocks):
                name = block["name"]
                nets.w1[i].copy_(tensors[f"{name}.0.weight"])
                nets.b1[i].copy_(tensors[f"{name}.0.bias"])
                nets.w2[i].copy_(tensors[f"{name}.2.weight"][0])
                nets.b2[i].copy_(tensors[f"{name}.2.bias"][0])
        return cls(
            nets,
            [b["name"] for b in blocks],
            [tuple(b["shape"]) if b["shape"] is not None else None for b in blocks],
            [b["effective_size"] for b in blocks],
            metadata.get("base_model", "unknown"),
            json.loads(metadata.get("provenance", "{}")),
        )

    def check_matches(self, named_shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        """Raise naming the first difference between the file's blocks and the model's trainable tensors."""
        mine = dict(zip(self.names, self.shapes))
        for name, shape in named_shapes:
            if name not in mine:
                raise OptimizerFileError(
                    f"the model's block {name!r} {list(shape)} has no network in the file "
                    f"(file: {len(self.names)} blocks for {self.base_model})"
                )
            if mine[name] is not None and tuple(mine[name]) != tuple(shape):
                raise OptimizerFileError(
                    f"block {name!r}: the model's shape {list(shape)} differs from the "
                    f"file's {list(mine[name])} (file trained for {self.base_model})"
                )
        extra = set(mine) - {name for name, _ in named_shapes}
        if extra:
            first = next(n for n in self.names if n in extra)
            raise OptimizerFileError(
                f"the file's block {first!r} is not a trainable tensor of the model ({len(extra)} such blocks)"
            )

    def nets_for(self, names: list[str]) -> BlockVarianceNets:
        """The networks re-stacked in the order of `names` (the optimizer's walk order)."""
        index = [self.names.index(n) for n in names]
        nets = BlockVarianceNets(len(names), self.nets.hidden)
        with torch.no_grad():
            for target, source in zip(nets.parameters(), self.nets.parameters()):
                target.copy_(source[index])
        return nets

    def summary(self) -> str:
        sizes = [d for d in self.effective_sizes if d is not None]
        lines = [
            f"base model: {self.base_model}",
            f"format version: {FORMAT_VERSION}",
            f"blocks: {len(self.names)} (hidden {self.nets.hidden}, "
            f"{sum(p.numel() for p in self.nets.parameters()):,} numbers)",
            f"feature order: {', '.join(FEATURES)}",
            f"effective sizes: {sum(sizes):,} in all" if sizes else "effective sizes: not recorded",
            f"provenance: {json.dumps(self.provenance)}",
            "first blocks:",
        ]
        for name, shape in list(zip(self.names, self.shapes))[:5]:
            lines.append(f"  {name} {list(shape) if shape else '(shape not recorded)'}")
        return "\n".join(lines)
