"""A start-up hint: Python told not to write bytecode caches, over packages installed without them.

Some container images set `PYTHONDONTWRITEBYTECODE=1` and install packages without `.pyc` files (uv's default):
every launch then compiles torch's, Lightning's and transformers' Python sources again. On an H100 host a warm
start took 21.5 s so, 12.6 s with the caches written (docs/benchmarks.md). Nothing here changes that; the fit
says so once, with the fix.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

PACKAGES = ("torch", "lightning", "transformers")


def uncached_packages(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed packages (name: folder) whose `__init__` has no bytecode cache next to it."""
    missing = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        if not os.path.exists(importlib.util.cache_from_source(spec.origin)):
            missing[name] = os.path.dirname(spec.origin)
    return missing


def warn_if_bytecode_uncached(packages: tuple[str, ...] = PACKAGES) -> bool:
    """Warn when every launch will compile these packages' sources again; True if it warned."""
    if not sys.dont_write_bytecode:
        return False  # the first launch writes the caches
    missing = uncached_packages(packages)
    if missing:
        log.warning(
            "Python writes no bytecode caches here (PYTHONDONTWRITEBYTECODE is set) and %s have none installed: "
            "every launch compiles their sources again (seconds of start-up). Once: python -m compileall -q %s",
            ", ".join(missing),
            " ".join(missing.values()),
        )
    return bool(missing)
