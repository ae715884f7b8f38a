"""What a fine-tuning module needs to know of its data, handed over in one typed object.

The module reads these facts in one place (`facts_of(trainer)`), not attribute by attribute with fallbacks: a
datamodule that is not one of ours (or none: `trainer.fit(module, train_dataloaders=...)`) gets the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataFacts:
    """The data side of a fit, as the module and its log use it.

    Attributes:
        batch_size: training rows per step (learned variance's block features are sized by it).
        max_new_tokens: the longest answer greedy decoding produces (generation tasks).
        val_split_names: what each validation dataloader holds, in order (`dev`, `eval`, `dev:<task>`).
        test_split_names: the same for test dataloaders.
        task: the task's name, or None for several tasks.
        truncated: per split, examples whose prompt was cut on the left.
        left_out: per split, rows left out (their answer cannot fit in max_length).
    """

    batch_size: int = 16
    max_new_tokens: int = 50
    val_split_names: tuple[str, ...] = ("dev",)
    test_split_names: tuple[str, ...] = ("test",)
    task: str | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)


def facts_of(trainer) -> DataFacts:
    """The facts of the trainer's datamodule (`facts()`), or the defaults where it has none."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    facts = getattr(datamodule, "facts", None)
    return facts() if callable(facts) else DataFacts()
