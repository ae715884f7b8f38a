"""The ZO optimizers by name, as `--model.optimizer` selects them."""

from __future__ import annotations

from zolightning.optim.estimated import ZOAdam, ZOSGDConserve, ZOSGDMomentum, ZOSGDSign
from zolightning.optim.shaped import LOZO, HiZOO
from zolightning.optim.zo_sgd import ZOSGD

OPTIMIZER_NAMES = ("zo_sgd", "zo_sgd_momentum", "zo_sgd_sign", "zo_sgd_conserve", "zo_adam", "hizoo", "lozo")


def build_zo_optimizer(
    name: str,
    params,
    queries: int = 1,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    hessian_smooth: float = 1e-6,
    lozo_rank: int = 1,
    lozo_interval: int = 100,
    **common,
) -> ZOSGD:
    """`common` are ZOSGD's arguments (lr, eps, weight_decay, seed, block_scales, noise, ...).

    `zo_sgd` is MeZO's ZOSGD (fused restore-and-update) with one query, the q-query estimate otherwise.
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown ZO optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
    if name == "zo_sgd" and queries == 1:
        return ZOSGD(params, **common)
    if common.pop("stochastic_rounding", False):
        raise ValueError(f"stochastic_rounding is supported by zo_sgd with one query only, not {name}")
    cls, options = {
        "zo_sgd": (ZOSGDMomentum, {"momentum": 0.0}),
        "zo_sgd_momentum": (ZOSGDMomentum, {"momentum": momentum}),
        "zo_sgd_sign": (ZOSGDSign, {}),
        "zo_sgd_conserve": (ZOSGDConserve, {}),
        "zo_adam": (ZOAdam, {"betas": betas}),
        "hizoo": (HiZOO, {"hessian_smooth": hessian_smooth}),
        "lozo": (LOZO, {"rank": lozo_rank, "interval": lozo_interval}),
    }[name]
    if not cls.DEVICE_STEP:
        common.pop("sync", None)  # these rules read g on the host
    return cls(params, queries=queries, **options, **common)
