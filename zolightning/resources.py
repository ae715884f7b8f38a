"""Configs and learned-optimizer files shipped inside the package, found by name from any folder.

A checkout's `configs/` and `optimizers/` are installed as `zolightning/configs` and `zolightning/optimizers`, so
`zolightning fit --config sst2/mezo` (or the README's `configs/sst2/mezo.yaml`) works after `pip install` in any
directory, and a config's `variance_file: optimizers/NAME.safetensors` finds the shipped file. A path that exists
always wins over a packaged name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGED = Path(__file__).parent
CONFIGS, OPTIMIZERS = PACKAGED / "configs", PACKAGED / "optimizers"


def packaged_configs() -> list[str]:
    """Every shipped config by name (`sst2/mezo`, `compare/sst2_schedule`, ...)."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def _packaged(path: str, root: Path, prefix: str, suffix: str) -> Path | None:
    name = Path(path)
    if name.parts[:1] == (prefix,):  # the checkout-relative spelling: configs/sst2/mezo.yaml
        name = Path(*name.parts[1:])
    for candidate in (root / name, root / name.with_name(name.name + suffix)):
        if candidate.is_file():
            return candidate
    return None


def find_config(path: str) -> Path:
    """`path` if it is a file, else the packaged config of that name; one line naming both places if neither."""
    if Path(path).expanduser().is_file():
        return Path(path).expanduser()
    found = _packaged(path, CONFIGS, "configs", ".yaml")
    if found is None:
        raise FileNotFoundError(
            f"no config {path!r}: not a file here, nor a packaged config (zolightning configs list)"
        )
    return found


def find_optimizer_file(path: str) -> str:
    """`path` if it exists, else the shipped learned-optimizer file it names (`optimizers/NAME.safetensors`)."""
    if Path(path).expanduser().exists():
        return path
    found = _packaged(path, OPTIMIZERS, "optimizers", ".safetensors")
    return str(found) if found is not None else path  # the loader reports a missing file with its own message


def main(argv: list[str]) -> int:
    """`zolightning configs list` / `zolightning configs copy NAME DEST`."""
    if argv[:1] == ["list"] and len(argv) == 1:
        print("\n".join(packaged_configs()))
        return 0
    if argv[:1] == ["copy"] and len(argv) == 3:
        source, dest = find_config(argv[1]), Path(argv[2])
        if dest.exists():
            raise FileExistsError(f"{dest} exists; not overwritten")
        shutil.copyfile(source, dest)
        print(f"copied {source} -> {dest}: zolightning fit --config {dest}")
        return 0
    print("usage: zolightning configs list | zolightning configs copy NAME DEST  (NAME: e.g. sst2/mezo)")
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2
