"""Read a task's raw rows from a local JSONL directory or the Hugging Face hub, checking every row."""

from __future__ import annotations

import json
from pathlib import Path

from zolightning.data.tasks import Task


class DataError(ValueError):
    """A data file or row is unusable; the message names the file and line."""


def checked_rows(numbered_rows, task: Task, where: str, counting: str | None = None) -> list[dict]:
    """The rows, each checked against `task`; the first bad one raises as `<where>:<number>: <problem>`
    (line numbers), or `<where> <counting> <number>: <problem>` (e.g. "row 6" of a CSV, whose header is line 1)."""
    rows = []
    for number, row in numbered_rows:
        problem = task.check(row)
        if problem:
            place = f"{where} {counting} {number}" if counting else f"{where}:{number}"
            raise DataError(f"{place}: {problem}")
        rows.append(row)
    if not rows:
        raise DataError(f"{where}: no rows (the {task.name} split is empty)")
    return rows


def _json_lines(path: Path):
    with path.open("rb") as lines:  # bytes, so that a line that is not UTF-8 is named by its number
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{number}: JSON nested too deeply") from None
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


def read_with_datasets(task: Task, split: str, data_dir: str | None) -> list[dict]:
    """A YAML-defined task's split through `datasets`: its own files, its hub dataset, or data_dir/<name>/."""
    import datasets

    data, hub = getattr(task, "data", None), getattr(task, "hub", None)
    if hub is not None and data_dir is None:
        name = hub.get(split, split)
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=name)
        return checked_rows(enumerate(dataset, start=1), task, f"{hub['path']}:{name}", "row")
    if data is not None:
        kind, path = data.get("format", "json"), Path(data[split])
    elif data_dir is not None:
        kind, path = "json", Path(data_dir).expanduser() / task.name / f"{split}.jsonl"
    else:
        raise DataError(f"{task.source}: the task names no 'data' or 'hub', and no data_dir was given")
    if not path.is_file():
        raise DataError(f"{task.name}: data file {path} does not exist")
    try:
        dataset = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # datasets' parse errors are of many types; say which file
        raise DataError(f"{path}: cannot be read as {kind}: {err}") from None
    return checked_rows(enumerate(dataset, start=1), task, str(path), "row")


def load_split(task: Task, split: str, data_dir: str | None) -> list[dict]:
    """`split` ('train' or 'validation') from `data_dir/<task>/<split>.jsonl`, or the hub when no dir is given."""
    if hasattr(task, "source"):  # defined in a YAML file
        return read_with_datasets(task, split, data_dir)
    if data_dir is None:
        return read_hub(task, split)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir {root.resolve()} is not a directory")
    return read_jsonl(root / task.name / f"{split}.jsonl", task)
