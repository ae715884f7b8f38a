"""Rules by short name, class path or object: how configs and `build_zo_optimizer` name a ZO rule."""

from __future__ import annotations

import importlib

from zolightning.optim.optimizer import ZOOptimizer
from zolightning.optim.rules import RULES, ZORule

OPTIMIZER_NAMES = ("zo_sgd", "zo_sgd_momentum", "zo_sgd_nesterov", "zo_sgd_sign", "zo_sgd_conserve", "zo_adam",
                   "hizoo", "lozo")  # fmt: skip


def resolve_rule(rule: ZORule | str | dict) -> ZORule:
    """A rule object from a short name (`zo_adam`), a class path (`zolightning.optim.rules.ZOAdam`), a config entry
    (`{"class_path": ..., "init_args": {...}}`, as checkpoints record it) or a rule object (returned as is)."""
    if isinstance(rule, ZORule):
        return rule
    if isinstance(rule, dict):
        return _rule_class(rule["class_path"])(**rule.get("init_args", {}))
    if isinstance(rule, str):
        return _rule_class(rule)()
    raise TypeError(f"a ZO rule is a name, a class path or a ZORule object, not {type(rule).__name__}")


def _rule_class(name: str) -> type[ZORule]:
    if name in RULES:
        return RULES[name]
    module, _, attribute = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attribute, None) if module else None
    if not (isinstance(cls, type) and issubclass(cls, ZORule)):
        raise ValueError(f"unknown ZO rule {name!r}; choose one of {', '.join(RULES)} or a ZORule class path")
    return cls


def build_zo_optimizer(rule: ZORule | str | dict, params, **common) -> ZOOptimizer:
    """`common` are ZOOptimizer's arguments (lr, eps, weight_decay, seed, queries, block_scales, noise, sync, ...).

    A rule that reads g on the host runs with sync=True whatever `sync` asks (the module asks for sync=False
    wherever the noise allows it)."""
    rule = resolve_rule(rule)
    if not rule.device_step:
        common.pop("sync", None)
    return ZOOptimizer(params, rule, **common)
