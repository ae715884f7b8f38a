"""Task definitions: the fields a row must have, its prompt, its candidate answers, how it trains.

Prompts follow the MeZO protocol (docs/tasks.md). Each task is a small class registered by name; the
DataModule looks it up, so adding a task is adding a class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class RenderedExample:
    """A row turned into text: the prompt, the candidate answers and the index of the gold one."""

    prompt: str
    candidates: tuple[str, ...]
    gold: int


class Task:
    """One benchmark task. Subclasses set the class attributes and implement `render`."""

    name: ClassVar[str]
    hub_path: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    fields: ClassVar[tuple[str, ...]]
    labels: ClassVar[tuple[int, ...]]
    train_mode: ClassVar[Literal["classification", "lm"]] = "classification"
    num_dev: ClassVar[int] = 500

    def check(self, row: dict) -> str | None:
        """Return why `row` is unusable, or None; the loader adds the file and line."""
        missing = [f for f in self.fields if f not in row]
        if missing:
            return f"missing field(s) {', '.join(missing)} (has {', '.join(sorted(row))})"
        if "label" in self.fields and row["label"] not in self.labels:
            return f"label {row['label']!r} is not one of {list(self.labels)}"
        return None

    def render(self, row: dict) -> RenderedExample:
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


@register
class SST2(Task):
    name = "sst2"
    hub_path = "nyu-mll/glue"
    hub_config = "sst2"
    fields = ("sentence", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        # GLUE sentences end in a space; MeZO strips it before the template.
        return RenderedExample(f"{row['sentence'].strip()} It was", (" terrible", " great"), row["label"])
