"""lm-evaluation-harness task files read as they are (a documented subset), so its task YAML needs no rewrite.

    task: sst2_yes_no                        # the task's name (metric names, data_dir sub-folder)
    dataset_path: nyu-mll/glue               # hub dataset; `json` with dataset_kwargs.data_files for local files
    dataset_name: sst2
    training_split: train                    # default train
    validation_split: validation             # default validation
    output_type: multiple_choice             # or generate_until (scored by F1 / exact match of greedy answers)
    doc_to_text: "{{sentence}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
    doc_to_choice: ["negative", "positive"]  # a list, a field holding one, or a Jinja template of a list
    doc_to_target: label                     # a field, an index, or a Jinja template (the answer for generate_until)
    target_delimiter: " "                    # between the prompt and every answer (default " ")

Keys the harness has and zolightning does not use (metric_list, fewshot settings, filters, ...) are listed once
in the log and otherwise ignored; `process_docs` and `!function` entries (Python code) are refused.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from zolightning.data.tasks import RenderedExample, Task, missing_fields

log = logging.getLogger(__name__)
USED = {
    "task", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "output_type",
    "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter",
}  # fmt: skip
OUTPUT_TYPES = ("multiple_choice", "generate_until")
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def is_harness_file(spec: dict) -> bool:
    return "task" in spec and "doc_to_text" in spec


class HarnessTask(Task):
    """A task from an lm-evaluation-harness YAML file: Jinja prompts over the dataset's rows."""

    def __init__(self, spec: dict[str, Any], source: Path):
        self.source, self.name = source, str(spec["task"])
        if "process_docs" in spec:  # the harness's Python hook over the rows: not run here, so not silently skipped
            raise self._failure("process_docs", "a Python hook over the rows; not supported (prepare the rows instead)")
        ignored = sorted(set(spec) - USED)
        if ignored:
            log.info("%s: lm-eval keys not used here: %s", source, ", ".join(ignored))
        output_type = spec.get("output_type", "multiple_choice")
        if output_type not in OUTPUT_TYPES:
            raise self._failure("output_type", f"{output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        self.generation = output_type == "generate_until"
        self.train_mode = "lm" if self.generation else "classification"
        self.delimiter = str(spec.get("target_delimiter", " "))
        self.text, self.target = spec["doc_to_text"], spec.get("doc_to_target")
        self.choice = None if self.generation else spec.get("doc_to_choice")
        if self.target is None or (not self.generation and self.choice is None):
            raise self._failure("doc_to_target", "needs doc_to_target (and doc_to_choice for multiple_choice)")
        self.fields = tuple(sorted(set().union(*(_fields(v) for v in (self.text, self.target, self.choice)))))
        self.labels, self.num_dev = (), Task.num_dev
        self.data, self.hub = self._data_spec(spec)
        self.hub_path, self.hub_config = (self.hub or {}).get("path", ""), (self.hub or {}).get("name")

    def _failure(self, key: str, why: str) -> ValueError:
        return ValueError(f"{self.source}: key '{key}': {why}")

    def _data_spec(self, spec: dict) -> tuple[dict | None, dict | None]:
        splits = {
            "train": spec.get("training_split", "train"),
            "validation": spec.get("validation_split", "validation"),
        }
        files = (spec.get("dataset_kwargs") or {}).get("data_files")
        if spec.get("dataset_path") in ("json", "csv", "parquet") and isinstance(files, dict):
            paths = {k: str((self.source.parent / files[v]).resolve()) for k, v in splits.items() if v in files}
            if len(paths) < 2:
                raise self._failure(
                    "dataset_kwargs.data_files", f"needs files for {splits['train']!r} and {splits['validation']!r}"
                )
            return {"format": spec["dataset_path"], **paths}, None
        if "dataset_path" not in spec:
            return None, None  # data_dir/<task>/{train,validation}.jsonl
        return None, {"path": spec["dataset_path"], "name": spec.get("dataset_name"), **splits}

    # ---- rows -------------------------------------------------------------------------------------------
    @staticmethod
    def _value(template, row: dict, literal: bool):
        """A doc_to_* entry for `row`: a field's value, a literal (list, index), or a Jinja template's result
        (read as a Python literal where it stands for a list or an index, as the harness does)."""
        if isinstance(template, str) and template in row:
            return row[template]
        if not isinstance(template, str):
            return template
        text = _JINJA.from_string(template).render(**row)
        if literal and "{{" in template:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text

    def _parts(self, row: dict) -> tuple[str, list[str], Any]:
        choices = [] if self.generation else self._value(self.choice, row, literal=True)
        return self._value(self.text, row, literal=False), choices, self._value(self.target, row, literal=True)

    def check(self, row: dict) -> str | None:
        missing = [f for f in self.fields if f not in row]
        if missing:
            return missing_fields(missing, row)
        try:
            self.render(row)
        except (jinja2.TemplateError, TypeError, ValueError, IndexError, KeyError) as error:
            return f"cannot be rendered by the task file: {' '.join(str(error).split())}"
        return None

    def render(self, row: dict) -> RenderedExample:
        prompt, choices, target = self._parts(row)
        if self.generation:
            answer = str(target[0] if isinstance(target, list) else target)
            return RenderedExample(str(prompt), (f"{self.delimiter}{answer}\n",), 0, (answer,))
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"doc_to_choice gave {choices!r}, not a list of at least two strings")
        gold = choices.index(target) if isinstance(target, str) and target in choices else target
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise ValueError(
                f"doc_to_target gave {target!r}, not an index of the {len(choices)} choices or one of them"
            )
        return RenderedExample(str(prompt), tuple(self.delimiter + c for c in choices), gold)


def _fields(template) -> set[str]:
    """The row fields a doc_to_* entry reads: a Jinja template's variables, or a bare field name."""
    if not isinstance(template, str):
        return set()
    if "{{" in template or "{%" in template:
        return set(jinja2.meta.find_undeclared_variables(_JINJA.parse(template)))
    return {template} if template.isidentifier() else set()
