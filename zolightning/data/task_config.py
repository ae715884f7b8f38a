"""Tasks defined in YAML: `--data.task path/to/task.yaml`, no change to the package.

    name: topic                                   # metric names and the data_dir sub-folder
    template: "Article: {text}\\nTopic:"            # str.format over the row's fields
    candidates: [" world", " sports", " business", " science"]   # label i -> candidates[i] ...
    # verbalizer: {world: " world", sports: " sports"}            # ... or label value -> candidate
    label_field: label                            # default: label
    metric: accuracy                              # accuracy (candidate scoring) or f1 (greedy generation)
    train_mode: classification                    # classification (cross-entropy over candidates) or lm
    strip: true                                   # strip the row's strings before the template (default)
    num_dev: 500                                  # dev examples sampled from train
    data:                                         # optional; else data_dir/<name>/{train,validation}.jsonl
      format: csv                                 # json (JSON lines), csv or parquet
      train: topic/train.csv                      # relative to this file
      validation: topic/test.csv
    # hub: {path: fancyzhx/ag_news, name: null, train: train, validation: test}

Generation tasks (`metric: f1`) name the gold answers instead of candidates: `answers_field: answers.text`
(a dotted path to a string or a list of strings); the model trains on `answer_prefix + first answer +
answer_suffix` (default " " and "\\n", as SQuAD). Every row is checked like a built-in task's (missing
fields, labels outside the label set) and a bad row stops the run with the file and row number.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml

from zolightning.data.harness_task import HarnessTask, is_harness_file
from zolightning.data.tasks import RenderedExample, Task, missing_fields, shape_problem

KEYS = {
    "name", "template", "candidates", "verbalizer", "label_field", "metric", "train_mode", "strip", "num_dev",
    "data", "hub", "answers_field", "answer_prefix", "answer_suffix", "preset", "chat_template",
}  # fmt: skip
# Instruction data in the shapes TRL, torchtune and litgpt read: the preset fills the keys a task file would need.
PRESETS = {
    "prompt_completion": {  # {"prompt": ..., "completion": ...}: train on the completion, score it by generation
        "template": "{prompt}", "metric": "f1", "answers_field": "completion", "strip": False,
        "answer_prefix": "", "answer_suffix": "\n",
    },
    "messages": {  # {"messages": [{role, content}, ...]}: the last (assistant) turn is the answer
        "template": "{messages}", "metric": "f1", "answers_field": "messages", "chat_template": True,
        "answer_prefix": "", "answer_suffix": "\n",
    },
}  # fmt: skip
MESSAGES_SHAPE = [{"role": str, "content": str}]
METRICS = ("accuracy", "f1")


class TaskConfigError(ValueError):
    """A task file that cannot define a task; the message names the file and the key."""


def _dig(row: dict, path: str) -> Any:
    value = row
    for part in path.split("."):
        value = value[part]
    return value


class ConfigTask(Task):
    """A Task whose prompt, candidates, label set and data come from a YAML file."""

    def __init__(self, spec: dict[str, Any], source: Path):
        self.source = source
        fail = self._failure
        unknown = sorted(set(spec) - KEYS)
        if unknown:
            raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(KEYS))})")
        self.preset = spec.get("preset")
        if self.preset is not None and self.preset not in PRESETS:
            raise fail("preset", f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        spec = {**PRESETS.get(self.preset, {}), **spec}
        self.chat_template = bool(spec.get("chat_template", False))
        for key in ("name", "template"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise fail(key, "missing (a non-empty string)")
        self.name, self.template = spec["name"], spec["template"]
        try:
            placeholders = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as err:
            raise fail("template", f"not a format string: {err}") from None
        if not placeholders or any(not f.isidentifier() for f in placeholders):
            raise fail("template", "needs {field} placeholders naming row fields, e.g. '{sentence} It was'")
        metric = spec.get("metric", "accuracy")
        if metric not in METRICS:
            raise fail("metric", f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        self.generation = metric == "f1"
        self.train_mode = spec.get("train_mode", "lm" if self.generation else "classification")
        if self.train_mode not in ("classification", "lm"):
            raise fail("train_mode", f"{self.train_mode!r} is not classification or lm")
        self.strip, self.num_dev = bool(spec.get("strip", True)), int(spec.get("num_dev", Task.num_dev))
        self.label_field = spec.get("label_field", "label")
        self._answer_parts = (spec.get("answer_prefix", " "), spec.get("answer_suffix", "\n"))
        if self.generation:
            self._setup_generation(spec)
        else:
            self._setup_candidates(spec)
        self.fields = tuple(dict.fromkeys([*placeholders, *self._extra_fields]))
        self.data, self.hub = self._data_spec(spec)
        self.hub_path, self.hub_config = (self.hub or {}).get("path", ""), (self.hub or {}).get("name")

    @classmethod
    def load(cls, path: str | Path) -> Task:
        """The task a YAML file defines: zolightning's keys, or an lm-evaluation-harness task file."""
        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise TaskConfigError(f"{path}: cannot read the task file: {err}") from None
        if not isinstance(spec, dict):
            raise TaskConfigError(f"{path}: expected a mapping of keys (name, template, candidates, ...)")
        if is_harness_file(spec):
            return HarnessTask(spec, path)
        return cls(spec, path)

    def _failure(self, key: str, why: str) -> TaskConfigError:
        return TaskConfigError(f"{self.source}: key '{key}': {why}")

    def _setup_candidates(self, spec: dict) -> None:
        if ("candidates" in spec) == ("verbalizer" in spec):
            raise self._failure("candidates", "give either 'candidates' (a list) or 'verbalizer' (label -> text)")
        if "candidates" in spec:
            if not isinstance(spec["candidates"], list) or len(spec["candidates"]) < 2:
                raise self._failure("candidates", "a list of at least two answer strings")
            mapping = dict(enumerate(spec["candidates"]))
        else:
            if not isinstance(spec["verbalizer"], dict) or len(spec["verbalizer"]) < 2:
                raise self._failure("verbalizer", "a mapping of at least two label values to answer strings")
            mapping = dict(spec["verbalizer"])
        if not all(isinstance(text, str) and text for text in mapping.values()):
            raise self._failure("candidates" if "candidates" in spec else "verbalizer", "answers must be strings")
        self.labels = tuple(mapping)
        self.candidates = tuple(mapping.values())
        self._extra_fields = [self.label_field]

    def _setup_generation(self, spec: dict) -> None:
        if "answers_field" not in spec:
            raise self._failure("answers_field", "metric f1 needs the dotted path of the gold answers")
        if "candidates" in spec or "verbalizer" in spec:
            raise self._failure("candidates", "metric f1 decodes answers: no candidates")
        self.answers_field, self.labels, self.candidates = spec["answers_field"], (), ()
        self._extra_fields = [self.answers_field.split(".")[0]]

    def _data_spec(self, spec: dict) -> tuple[dict | None, dict | None]:
        data, hub = spec.get("data"), spec.get("hub")
        if data is not None and hub is not None:
            raise self._failure("data", "give either local 'data' or 'hub', not both")
        if data is not None:
            missing = [k for k in ("train", "validation") if k not in data]
            if missing:
                raise self._failure(f"data.{missing[0]}", "missing (a file path, relative to the task file)")
            if data.get("format", "json") not in ("json", "csv", "parquet"):
                raise self._failure("data.format", f"{data['format']!r} is not json, csv or parquet")
            data = {**data, **{k: str((self.source.parent / data[k]).resolve()) for k in ("train", "validation")}}
        if hub is not None and "path" not in hub:
            raise self._failure("hub.path", "missing (a dataset id on the hub)")
        return data, hub

    # ---- rows -------------------------------------------------------------------------------------------
    def check(self, row: dict) -> str | None:
        missing = [f for f in self.fields if f not in row]
        if missing:
            return missing_fields(missing, row)
        if self.preset == "messages":
            return _conversation_problem(row["messages"])
        if not self.generation:
            label = row[self.label_field]
            return None if label in self.labels else f"{self.label_field} {label!r} is not one of {list(self.labels)}"
        try:
            answers = _dig(row, self.answers_field)
        except (KeyError, TypeError):
            return f"no field {self.answers_field}"
        return None if answers else f"{self.answers_field} is empty"

    def render(self, row: dict) -> RenderedExample:
        if self.preset == "messages":  # the prompt is the conversation so far, through the chat template
            *before, last = row["messages"]
            prefix, suffix = self._answer_parts
            prompt = "\n".join(m["content"] for m in before)  # what a tokenizer without a template sees
            answer = last["content"]
            return RenderedExample(prompt, (f"{prefix}{answer}{suffix}",), 0, (answer,), tuple(before))
        values = {k: v.strip() if self.strip and isinstance(v, str) else v for k, v in row.items()}
        prompt = self.template.format(**values)
        if self.generation:
            answers = _dig(row, self.answers_field)
            answers = (answers,) if isinstance(answers, str) else tuple(answers)
            prefix, suffix = self._answer_parts
            return RenderedExample(prompt, (f"{prefix}{answers[0]}{suffix}",), 0, answers)
        return RenderedExample(prompt, self.candidates, self.labels.index(row[self.label_field]))


def _conversation_problem(messages) -> str | None:
    """Why `messages` is not a conversation ending in the assistant's answer, or None."""
    problem = shape_problem(messages, MESSAGES_SHAPE, "messages")
    if problem:
        return problem
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        return "messages must end with an assistant turn after at least one other (the answer to learn)"
    return None
