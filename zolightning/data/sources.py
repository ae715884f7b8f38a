"""Read a task's raw rows from a local JSONL directory or the Hugging Face hub, checking every row."""

from __future__ import annotations

import json
from pathlib import Path

from zolightning.data.tasks import Task


class DataError(ValueError):
    """A data file or row is unusable; the message names the file and line."""


def checked_rows(numbered_rows, task: Task, where: str) -> list[dict]:
    """The rows, each checked against `task`; the first bad one raises as `<where>:<number>: <problem>`."""
    rows = []
    for number, row in numbered_rows:
        problem = task.check(row)
        if problem:
            raise DataError(f"{where}:{number}: {problem}")
        rows.append(row)
    if not rows:
        raise DataError(f"{where}: no rows (the {task.name} split is empty)")
    return rows


def _json_lines(path: Path):
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def read_jsonl(path: Path, task: Task) -> list[dict]:
    """All rows of `path`, each checked against `task`; the first bad row raises with its line number."""
    if not path.is_file():
        raise DataError(f"{task.name}: data file {path} does not exist")
    return checked_rows(_json_lines(path), task, str(path))


def read_hub(task: Task, split: str) -> list[dict]:
    """Rows of a hub split, checked like local files (row numbers stand in for line numbers)."""
    import datasets

    dataset = datasets.load_dataset(task.hub_path, task.hub_config, split=split)
    return checked_rows(enumerate(dataset, start=1), task, f"{task.hub_path}/{task.hub_config or ''}:{split} row")


def load_split(task: Task, split: str, data_dir: str | None) -> list[dict]:
    """`split` ('train' or 'validation') from `data_dir/<task>/<split>.jsonl`, or the hub when no dir is given."""
    if data_dir is None:
        return read_hub(task, split)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir {root.resolve()} is not a directory")
    return read_jsonl(root / task.name / f"{split}.jsonl", task)
