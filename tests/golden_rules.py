"""How the golden tests build each rule's optimizer: the one place that changes when the optimizer API does."""

from __future__ import annotations

import functools

from zolightning.optim import LOZO, build_zo_optimizer

PINNED = ("zo_sgd", "zo_sgd_momentum", "zo_sgd_sign", "zo_sgd_conserve", "zo_adam", "hizoo", "lozo")  # before #30


def rule_names() -> tuple[str, ...]:
    return PINNED


def build_case_optimizer(name: str, params, lr: float = 1e-3, eps: float = 1e-3, seed: int = 3, **common):
    rule = LOZO(rank=2, interval=4) if name == "lozo" else name  # window changes inside 10 steps
    return build_zo_optimizer(rule, params, lr=lr, eps=eps, seed=seed, **common)


@functools.cache
def golden_batch() -> dict:
    """The first training batch of the SST-2 slice every golden case scores (tiny-llama tokenizer, 4 rows)."""
    from tests.conftest import DATA_DIR
    from zolightning.data import TaskDataModule

    data = TaskDataModule(task="sst2", tokenizer="tiny-llama", data_dir=str(DATA_DIR), num_train=16, batch_size=4)
    data.setup("fit")
    return next(iter(data.train_dataloader()))
