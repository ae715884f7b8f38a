"""Loading checkpoints without running their code: one owner for "may this file be unpickled?".

A `.ckpt` is a pickle, and unpickling can call any function the file names. Every path that reads a checkpoint
(`fit/validate/test/predict --ckpt_path`, `export`, a sharded run's folder) therefore reads it with torch's
weights-only unpickler, which admits tensors, containers and primitives only (all a zolightning checkpoint
holds). A file that names anything else is refused with one line; the user can overrule that for a file they
trust (`--weights_only false` on Lightning's commands, `--trust-pickle` on `export`).

A sharded (distributed) checkpoint is a folder whose `.metadata` torch reads with the plain `pickle` module, and
whose non-tensor entries it reads with `weights_only=False`. `check_sharded_checkpoint` therefore unpickles the
metadata with an allow-list of the classes torch writes there for tensors, which leaves non-tensor entries out
(zolightning keeps everything but the weights in the folder's `meta.pt`, read weights-only), before torch
touches the folder.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

# What `torch.distributed.checkpoint` writes into a folder's `.metadata` (torch 2.4 - 2.13): plain records
# whose construction runs no code.
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names objects outside the allow-list; loading it could run code. The message is one line."""


def refusal(path: str | Path, reason: str, overrule: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to load {path}: {reason}; unpickling it could run arbitrary code. "
        f"Only for a file you trust: {overrule}"
    )


def first_line_of(error: BaseException) -> str:
    """torch's weights-only refusal is a page long; its reason is the line naming the unsupported global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower() and ("global" in line.lower() or "operand" in line.lower()):
            return line.removeprefix("WeightsUnpickler error: ").rstrip(".")
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: str | Path, trust_pickle: bool = False, overrule: str = "--trust-pickle") -> dict[str, Any]:
    """A single-file checkpoint's dict, read weights-only unless `trust_pickle`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except UnsafeCheckpointError:
        raise
    except pickle.UnpicklingError as error:
        raise refusal(path, first_line_of(error), overrule) from None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_CLASSES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        # BytesStorageMetadata included: torch would read such an entry with weights_only=False
        raise pickle.UnpicklingError(f"it names {module}.{name}, which zolightning's sharded checkpoints never hold")


def check_sharded_checkpoint(folder: str | Path, overrule: str = "--trust-pickle") -> None:
    """Raise `UnsafeCheckpointError` unless the distributed checkpoint `folder` can be read without running code."""
    folder = Path(folder)
    metadata_file = folder / ".metadata"
    if not metadata_file.is_file():
        raise FileNotFoundError(f"{folder} is not a distributed checkpoint: it has no .metadata file")
    try:
        with metadata_file.open("rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
    except pickle.UnpicklingError as error:
        raise refusal(metadata_file, str(error), overrule) from None
    except Exception as error:  # truncated or not a pickle at all
        raise ValueError(f"{metadata_file} is not a readable checkpoint metadata file ({error})") from None
    if not isinstance(getattr(metadata, "state_dict_metadata", None), dict):
        raise ValueError(f"{metadata_file} is not a distributed checkpoint's metadata")


def check_checkpoint_path(path: str | Path) -> None:
    """Refuse with one line a checkpoint path that is missing, empty or truncated (before Lightning reads it)."""
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise FileNotFoundError(f"{path} is a folder but not a sharded checkpoint (it has no .metadata)")
        return
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is empty or truncated (not a complete checkpoint: an interrupted copy or write?); "
            "use another one, e.g. the best-by-dev file beside it"
        )


def newest_last_checkpoint(run_root: Path) -> Path:
    """`--ckpt_path last`: the newest `last.ckpt` of any version of a run (`<save_dir>/<name>/*/checkpoints/`)."""
    found = [p for p in run_root.glob("*/checkpoints/last.ckpt") if p.exists()]
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {run_root}/*/checkpoints/ (the run's logger save_dir and name); "
            "pass the checkpoint's path instead"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
