"""Task definitions: the fields a row must have, its prompt, its candidate answers, how it trains.

Prompts follow the MeZO protocol (docs/tasks.md). Each task is a small class registered by name; the
DataModule looks it up. A task can also be defined in a YAML file without touching the package
(`task_config.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class RenderedExample:
    """A row turned into text: the prompt, the candidate answers and the index of the gold one.

    Generation tasks have one candidate (the first gold answer, for LM training) and list every gold
    answer in `references` (for F1 / exact match).
    """

    prompt: str
    candidates: tuple[str, ...]
    gold: int
    references: tuple[str, ...] = ()
    messages: tuple[dict, ...] = ()  # a conversation before the answer: the prompt through a chat template


class Task:
    """One benchmark task. Subclasses set the class attributes and implement `render`."""

    name: ClassVar[str]
    hub_path: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    fields: ClassVar[tuple[str, ...]]
    labels: ClassVar[tuple[int, ...]]
    train_mode: ClassVar[Literal["classification", "lm"]] = "classification"
    generation: ClassVar[bool] = False  # evaluated by greedy decoding (F1 / EM) instead of candidate scoring
    chat_template: ClassVar[bool] = False  # prompts go through the tokenizer's chat template (data/encoding.py)
    num_dev: ClassVar[int] = 500

    # A field's expected JSON shape: str, int, [item] (a list of items) or {key: shape}; a field not named here is
    # a string, "label" an integer. Checked before rendering so that a wrong type names its file and line.
    shapes: ClassVar[dict[str, object]] = {}

    def check(self, row: dict) -> str | None:
        """Return why `row` is unusable, or None; the loader adds the file and line."""
        missing = [f for f in self.fields if f not in row]
        if missing:
            return missing_fields(missing, row)
        for field in self.fields:
            problem = shape_problem(row[field], self.shapes.get(field, int if field == "label" else str), field)
            if problem:
                return problem
        if "label" in self.fields and self.labels and row["label"] not in self.labels:
            return f"label {row['label']!r} is not one of {list(self.labels)}"
        return None

    def render(self, row: dict) -> RenderedExample:
        raise NotImplementedError


def missing_fields(missing: list[str], row: dict) -> str:
    """Why a row is unusable: the fields it lacks and those it has, on one line (names with control characters, a
    newline say, are escaped: the loader's errors are one line)."""
    has = ", ".join(sorted(repr(str(name))[1:-1] for name in row))
    return f"missing field(s) {', '.join(missing)} (has {has})"


def shape_problem(value, shape, name: str) -> str | None:
    """Why `value` does not have `shape` (see `Task.shapes`), naming the field path, or None."""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{name} is {_json_type(value)}, expected a list"
        return next((p for i, v in enumerate(value) if (p := shape_problem(v, shape[0], f"{name}[{i}]"))), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{name} is {_json_type(value)}, expected an object with {', '.join(shape)}"
        if missing := [key for key in shape if key not in value]:
            return f"{name} has no {', '.join(missing)}"
        return next((p for k, s in shape.items() if (p := shape_problem(value[k], s, f"{name}.{k}"))), None)
    wrong = not isinstance(value, shape) or (shape is int and isinstance(value, bool))
    return f"{name} is {_json_type(value)}, expected {_json_type(shape())}" if wrong else None


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    names[dict] = "an object"
    return "null" if value is None else names.get(type(value), type(value).__name__)


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    """A built-in task by name, or a task defined in a YAML file (`task_config.py`) by its path."""
    if name.endswith((".yaml", ".yml")):
        from zolightning.data.task_config import ConfigTask

        return ConfigTask.load(name)
    try:
        return TASKS[name.lower()]()
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}, or a task file (.yaml)") from None


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


@register
class RTE(Task):
    name = "rte"
    hub_path, hub_config = "aps/super_glue", "rte"
    fields = ("premise", "hypothesis", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
        return RenderedExample(prompt, ("Yes", "No"), row["label"])


@register
class CB(Task):
    name = "cb"
    hub_path, hub_config = "aps/super_glue", "cb"
    fields = ("premise", "hypothesis", "label")
    labels = (0, 1, 2)
    num_dev = 100

    def render(self, row: dict) -> RenderedExample:
        prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?\n'
        return RenderedExample(prompt, ("Yes", "No", "Maybe"), row["label"])


@register
class BoolQ(Task):
    name = "boolq"
    hub_path, hub_config = "aps/super_glue", "boolq"
    fields = ("question", "passage", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        question = row["question"].strip()
        question = question[:1].upper() + question[1:]
        if not question.endswith("?"):
            question += "?"
        return RenderedExample(f"{row['passage']} {question}\n", ("No", "Yes"), row["label"])


@register
class WSC(Task):
    name = "wsc"
    hub_path, hub_config = "aps/super_glue", "wsc.fixed"
    fields = ("text", "span1_text", "span2_text", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        prompt = (
            f'{row["text"]}\nIn the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
            f"refer to {row['span1_text']}? Yes or No?\n"
        )
        return RenderedExample(prompt, ("No", "Yes"), row["label"])


@register
class WiC(Task):
    name = "wic"
    hub_path, hub_config = "aps/super_glue", "wic"
    fields = ("word", "sentence1", "sentence2", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        prompt = (
            f'Does the word "{row["word"]}" have the same meaning in these two sentences? Yes, No?\n'
            f"{row['sentence1']}\n{row['sentence2']}\n"
        )
        return RenderedExample(prompt, ("No", "Yes"), row["label"])


@register
class MultiRC(Task):
    name = "multirc"
    hub_path, hub_config = "aps/super_glue", "multirc"
    fields = ("paragraph", "question", "answer", "label")
    labels = (0, 1)

    def render(self, row: dict) -> RenderedExample:
        prompt = (
            f'{row["paragraph"]}\nQuestion: {row["question"]}\nI found this answer "{row["answer"]}". '
            "Is that correct? Yes or No?\n"
        )
        return RenderedExample(prompt, ("No", "Yes"), row["label"])


def _lower_first(text: str) -> str:
    # "I" stays capitalised ("I", "I'm", ...); everything else starts lower-case after the connective.
    if text.startswith("I ") or text.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


@register
class COPA(Task):
    """`premise without its period + " so "/" because "` + choice; the space is carried by the candidate
    (" the sun rose.") so that the prompt's last token never merges with the answer's first."""

    name = "copa"
    hub_path, hub_config = "aps/super_glue", "copa"
    fields = ("premise", "choice1", "choice2", "question", "label")
    labels = (0, 1)
    train_mode = "lm"
    num_dev = 100

    def check(self, row: dict) -> str | None:
        problem = super().check(row)
        if problem is None and row["question"] not in ("cause", "effect"):
            return f"question {row['question']!r} is not 'cause' or 'effect'"
        return problem

    def render(self, row: dict) -> RenderedExample:
        premise = row["premise"].rstrip()
        premise = premise[:-1] if premise.endswith(".") else premise
        connective = " so" if row["question"] == "effect" else " because"
        choices = tuple(" " + _lower_first(row[key]) for key in ("choice1", "choice2"))
        return RenderedExample(premise + connective, choices, row["label"])


@register
class ReCoRD(Task):
    name = "record"
    hub_path, hub_config = "aps/super_glue", "record"
    fields = ("passage", "query", "entities", "answers")
    shapes = {"entities": [str], "answers": [str]}
    labels = ()
    train_mode = "lm"

    def check(self, row: dict) -> str | None:
        problem = super().check(row)
        if problem is None and not any(answer in row["entities"] for answer in row["answers"]):
            return "no gold answer is among the entities"
        return problem

    def render(self, row: dict) -> RenderedExample:
        passage = row["passage"].replace("@highlight\n", "- ")
        entities = list(dict.fromkeys(row["entities"]))  # unique, order kept
        gold = next(i for i, entity in enumerate(entities) if entity in row["answers"])
        candidates = tuple(" " + row["query"].replace("@placeholder", entity) for entity in entities)
        return RenderedExample(f"{passage}\n-", candidates, gold)


@register
class SQuAD(Task):
    name = "squad"
    hub_path, hub_config = "rajpurkar/squad", None
    fields = ("title", "context", "question", "answers")
    shapes = {"answers": {"text": [str]}}
    labels = ()
    train_mode = "lm"
    generation = True

    def check(self, row: dict) -> str | None:
        problem = super().check(row)
        if problem is None and not row["answers"].get("text"):
            return "answers.text is empty"
        return problem

    def render(self, row: dict) -> RenderedExample:
        prompt = f"Title: {row['title']}\nContext: {row['context']}\nQuestion: {row['question']}\nAnswer:"
        answers = tuple(row["answers"]["text"])
        return RenderedExample(prompt, (f" {answers[0]}\n",), 0, answers)


@register
class DROP(Task):
    name = "drop"
    hub_path, hub_config = "ucinlp/drop", None
    fields = ("passage", "question", "answers_spans")
    shapes = {"answers_spans": {"spans": [str]}}
    labels = ()
    train_mode = "lm"
    generation = True

    def check(self, row: dict) -> str | None:
        problem = super().check(row)
        if problem is None and not row["answers_spans"].get("spans"):
            return "answers_spans.spans is empty"
        return problem

    def render(self, row: dict) -> RenderedExample:
        answers = tuple(row["answers_spans"]["spans"])
        prompt = f"Passage: {row['passage']}\nQuestion: {row['question']}\nAnswer:"
        return RenderedExample(prompt, (f" {answers[0]}\n",), 0, answers)
