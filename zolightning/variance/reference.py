"""Import the reference release's pickled learned optimizers (ASTRAL-Group/ZO_Fine_tuner, learned_finetuner/).

Each `.pth` is a pickled dict {HF parameter name: Sequential(Linear(5, 64), Tanh(), Linear(64, 1))}.
Unpickling runs arbitrary code, so `load_reference` refuses unless the caller passes `trust_pickle=True`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from zolightning.variance.file_format import LearnedOptimizerFile, OptimizerFileError
from zolightning.variance.networks import BlockVarianceNets


class UntrustedPickleError(PermissionError):
    """Loading a pickled file was not explicitly allowed."""


def load_reference_nets(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.nn.Sequential]:
    """The pickled dict of the reference release, on the CPU, in its own (named_parameters) order."""
    path = Path(path)
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{path} is a pickle: loading it can run arbitrary code. Pass --trust-pickle (trust_pickle=True) "
            "only for files from a source you trust, e.g. the reference release."
        )
    if not path.is_file():
        raise OptimizerFileError(f"reference file {path} does not exist")
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.nn.Sequential) for v in loaded.values()):
        raise OptimizerFileError(f"{path}: expected a dict of parameter name -> Sequential")
    return loaded


def convert_reference(
    path: str | Path,
    trust_pickle: bool = False,
    base_model: str = "unknown",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> LearnedOptimizerFile:
    """A LearnedOptimizerFile from a reference `.pth`; `shapes` (name -> shape) fills the block shapes."""
    nets = load_reference_nets(path, trust_pickle)
    names = list(nets)
    stacked = BlockVarianceNets.from_sequentials([nets[n].float() for n in names])
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    shapes = shapes or {}
    return LearnedOptimizerFile(
        stacked,
        names,
        [shapes.get(n) for n in names],
        [None] * len(names),
        base_model,
        provenance={
            "source": "reference release (ASTRAL-Group/ZO_Fine_tuner, learned_finetuner/)",
            "file": Path(path).name,
            "sha256": digest,
            "meta_trained_on": "copa",
        },
    )
