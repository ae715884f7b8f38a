"""A comparison grid: methods × tasks × learning rates × seeds, read from YAML, expanded into runs.

    name: sst2-schedule
    out_dir: runs/sst2-schedule          # relative paths are relative to the current directory
    tasks: [sst2]
    methods:
      mezo:
        config: configs/{task}/mezo.yaml
        lrs: [3.0e-6, 1.0e-5]              # optional: this method's own lrs (each tuned on its own range)
      learned:
        config: configs/{task}/zo_finetuner.yaml
        args: {model.variance_file: optimizers/x.safetensors}
    lrs: [1.0e-5, 3.0e-5]
    seeds: [0, 1, 2]
    args: {trainer.max_steps: 20000}     # every run
    baseline: mezo                       # paired tests compare every method with this one
    parallel: 3                          # runs at once on each device
    devices: [0]                         # CUDA device indices; [] runs on the CPU

Every method of a task runs the same steps, so methods that spend two forward passes a step are compared at
equal forward passes; the table's `forwards` column shows each run's count (HiZOO spends 3 a step, Conserve 4-5,
q queries 2q): give such a method a smaller `trainer.max_steps` in its `args` for an equal budget. A seed sets
`seed_everything`, `model.zo_seed` and `data.seed` (which training examples are sampled), so runs of different
methods with the same seed see the same data and are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zolightning.resources import find_config

KNOWN_KEYS = {"name", "out_dir", "tasks", "methods", "lrs", "seeds", "args", "baseline", "parallel", "devices"}


class GridError(ValueError):
    """A grid file that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class Method:
    name: str
    config: str  # a path pattern with {task}
    args: dict[str, Any] = field(default_factory=dict)
    lrs: tuple[float, ...] = ()  # this method's own learning rates (else the grid's)


@dataclass(frozen=True)
class RunSpec:
    """One fit of the grid: where it lives and the exact `zolightning fit` arguments that define it."""

    task: str
    method: str
    lr: float
    seed: int
    config: Path
    run_dir: Path
    args: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.method}/lr{self.lr:g}/seed{self.seed}"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "tb"

    @property
    def max_steps(self) -> int | None:
        """The run's own `trainer.max_steps` where the grid sets it (a method's value beats the grid's)."""
        values = [v for flag, v in zip(self.args[::2], self.args[1::2]) if flag == "--trainer.max_steps"]
        return int(values[-1]) if values else None


@dataclass(frozen=True)
class Grid:
    name: str
    out_dir: Path
    tasks: tuple[str, ...]
    methods: tuple[Method, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    args: dict[str, Any]
    baseline: str
    parallel: int
    devices: tuple[int, ...]
    source: Path

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        try:
            path = find_config(str(path))  # a file, or a shipped grid by name (compare/sst2_schedule)
        except FileNotFoundError:
            raise GridError(f"{path}: no such grid file (nor a shipped one: zolightning configs list)") from None
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise GridError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise GridError(f"{path}: expected a mapping of keys (name, tasks, methods, ...)")
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path) -> Grid:
        def fail(key: str, why: str) -> GridError:
            return GridError(f"{source}: key '{key}': {why}")

        unknown = sorted(set(raw) - KNOWN_KEYS)
        if unknown:
            raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
        for key in ("name", "tasks", "methods", "seeds"):
            if not raw.get(key):
                raise fail(key, "missing or empty")
        methods = _methods(raw["methods"], fail)
        if not raw.get("lrs") and not all(m.lrs for m in methods):
            raise fail("lrs", "missing: give the grid's lrs, or lrs for every method")
        names = [m.name for m in methods]
        baseline = raw.get("baseline", names[0])
        if baseline not in names:
            raise fail("baseline", f"{baseline!r} is not one of the methods {names}")
        lrs = _numbers(raw.get("lrs") or [], float, "lrs", fail)
        if any(lr <= 0 for lr in lrs + tuple(lr for m in methods for lr in m.lrs)):
            raise fail("lrs", "learning rates must be positive")
        parallel = raw.get("parallel", 1)
        if not isinstance(parallel, int) or parallel < 1:
            raise fail("parallel", f"a positive integer, got {parallel!r}")
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise fail("args", "a mapping of option → value, e.g. {trainer.max_steps: 20000}")
        return cls(
            name=str(raw["name"]),
            out_dir=Path(raw.get("out_dir", Path("runs") / str(raw["name"]))),
            tasks=tuple(str(t) for t in _listed(raw["tasks"], "tasks", fail)),
            methods=methods,
            lrs=lrs,
            seeds=_numbers(raw["seeds"], int, "seeds", fail),
            args=args,
            baseline=baseline,
            parallel=parallel,
            devices=_numbers(raw.get("devices") or [], int, "devices", fail),
            source=source,
        )

    def runs(self) -> list[RunSpec]:
        """Every run, seeds innermost, so that a cut grid has whole seed sets of the first settings."""
        runs = []
        for task in self.tasks:
            for method in self.methods:
                config = _config_path(method.config.format(task=task))
                for lr in method.lrs or self.lrs:
                    for seed in self.seeds:
                        run_dir = self.out_dir / task / method.name / f"lr{lr:g}" / f"seed{seed}"
                        options = {**self.args, **method.args, "model.lr": lr}
                        options.update({"seed_everything": seed, "model.zo_seed": seed, "data.seed": seed})
                        runs.append(RunSpec(task, method.name, lr, seed, config, run_dir, _flags(options)))
        return runs

    def all_lrs(self) -> list[float]:
        return sorted({lr for m in self.methods for lr in (m.lrs or self.lrs)})

    def check_configs(self) -> None:
        for run in self.runs():
            if not run.config.is_file():
                raise GridError(f"{self.source}: method '{run.method}', task '{run.task}': no config {run.config}")


def _listed(value: Any, key: str, fail) -> list:
    if not isinstance(value, list):
        raise fail(key, f"a list, got {value!r}")
    return value


def _numbers(value: Any, kind: type, key: str, fail) -> tuple:
    try:
        return tuple(kind(v) for v in _listed(value, key, fail))
    except (TypeError, ValueError) as err:
        raise fail(key, f"a list of {kind.__name__}s: {err}") from err


def _methods(value: Any, fail) -> tuple[Method, ...]:
    if not isinstance(value, dict):
        raise fail("methods", "a mapping of method name → {config: PATH, args: {...}}")
    methods = []
    for name, spec in value.items():
        if not isinstance(spec, dict) or "config" not in spec:
            raise fail(f"methods.{name}", "needs 'config' (a path; {task} is replaced by the task)")
        unknown = sorted(set(spec) - {"config", "args", "lrs"})
        if unknown:
            raise fail(f"methods.{name}.{unknown[0]}", "unknown key (known: config, args, lrs)")
        if "/" in str(name) or not str(name):
            raise fail(f"methods.{name}", "a method name is a folder name: no '/'")
        lrs = _numbers(spec.get("lrs") or [], float, f"methods.{name}.lrs", fail)
        methods.append(Method(str(name), str(spec["config"]), dict(spec.get("args") or {}), lrs))
    return tuple(methods)


def _flags(options: dict[str, Any]) -> tuple[str, ...]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key}", _text(value)]
    return tuple(flags)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _config_path(text: str) -> Path:
    """A method's config: the file, or the shipped config of that name; `check_configs` reports neither."""
    try:
        return find_config(text)
    except FileNotFoundError:
        return Path(text)
