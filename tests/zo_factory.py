"""Tests build optimizers from a rule (class or short name) and one flat set of options: the rule's own options go
to the rule object, the rest to the optimizer."""

from __future__ import annotations

import inspect

from zolightning.optim import RULES, ZOOptimizer, build_zo_optimizer

ALIASES = {"lozo_rank": "rank", "lozo_interval": "interval"}  # the flat option names of before the rule objects


def make_optimizer(rule, params, **options) -> ZOOptimizer:
    """`rule`: a ZORule class (built with ZOOptimizer: sync as given) or a short name (`build_zo_optimizer`: a rule
    that reads g on the host syncs whatever `sync` says)."""
    if isinstance(rule, str) and rule not in RULES:
        return build_zo_optimizer(rule, params, **options)  # its error names the rules
    cls = RULES[rule] if isinstance(rule, str) else rule
    accepted = _options(cls)
    options = {ALIASES.get(k, k): v for k, v in options.items()}
    rule_options = {k: options.pop(k) for k in list(options) if k in accepted}
    for other in set().union(*map(_options, RULES.values())) - accepted:  # another rule's option: not this one's
        options.pop(other, None)
    if isinstance(rule, str):
        return build_zo_optimizer(cls(**rule_options), params, **options)
    return ZOOptimizer(params, cls(**rule_options), **options)


def _options(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
