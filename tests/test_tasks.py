"""Every task renders a fixed row to the exact prompt and candidates of docs/tasks.md (MeZO protocol)."""

import json
from pathlib import Path

import pytest

from zolightning.data import TASKS, TaskDataModule, get_task
from zolightning.data.sources import read_jsonl

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

CASES = {
    "sst2": ({"sentence": "a gem ", "label": 1}, "a gem It was", (" terrible", " great"), 1),
    "rte": (
        {"premise": "P.", "hypothesis": "H", "label": 1},
        'P.\nDoes this mean that "H" is true? Yes or No?\n',
        ("Yes", "No"),
        1,
    ),
    "cb": (
        {"premise": "P.", "hypothesis": "H", "label": 2},
        'Suppose P. Can we infer that "H"? Yes, No, or Maybe?\n',
        ("Yes", "No", "Maybe"),
        2,
    ),
    "boolq": ({"question": "is it true", "passage": "T -- x.", "label": 1}, "T -- x. Is it true?\n", ("No", "Yes"), 1),
    "wsc": (
        {"text": "Mark lied. He ran.", "span1_text": "Mark", "span2_text": "He", "label": 1},
        'Mark lied. He ran.\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n',
        ("No", "Yes"),
        1,
    ),
    "wic": (
        {"word": "bank", "sentence1": "S1", "sentence2": "S2", "label": 0},
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nS1\nS2\n',
        ("No", "Yes"),
        0,
    ),
    "multirc": (
        {"paragraph": "Para.", "question": "Q?", "answer": "A", "label": 1},
        'Para.\nQuestion: Q?\nI found this answer "A". Is that correct? Yes or No?\n',
        ("No", "Yes"),
        1,
    ),
    "copa": (
        {
            "premise": "The man fell.",
            "choice1": "He slipped.",
            "choice2": "I pushed him.",
            "question": "cause",
            "label": 0,
        },
        "The man fell because",
        (" he slipped.", " I pushed him."),
        0,
    ),
    "record": (
        {"passage": "A.@highlight\nB", "query": "@placeholder won.", "entities": ["X", "Y"], "answers": ["Y"]},
        "A.- B\n-",
        (" X won.", " Y won."),
        1,
    ),
    "squad": (
        {"title": "T", "context": "C", "question": "Q?", "answers": {"text": ["a", "b"], "answer_start": [0, 1]}},
        "Title: T\nContext: C\nQuestion: Q?\nAnswer:",
        (" a\n",),
        0,
    ),
    "drop": (
        {"passage": "P", "question": "Q?", "answers_spans": {"spans": ["3", "three"], "types": ["number"] * 2}},
        "Passage: P\nQuestion: Q?\nAnswer:",
        (" 3\n",),
        0,
    ),
}


def test_every_task_has_a_case():
    assert set(CASES) == set(TASKS)
    assert len(TASKS) == 11


@pytest.mark.parametrize("name", sorted(CASES))
def test_prompt_candidates_and_label_mapping(name):
    row, prompt, candidates, gold = CASES[name]
    rendered = get_task(name).render(row)
    assert rendered.prompt == prompt
    assert rendered.candidates == candidates
    assert rendered.gold == gold


def test_copa_effect_and_lm_training():
    task = get_task("copa")
    row = {"premise": "It rained.", "choice1": "The grass got wet.", "choice2": "X.", "question": "effect", "label": 0}
    assert task.render(row).prompt + task.render(row).candidates[0] == "It rained so the grass got wet."
    assert task.train_mode == "lm" and get_task("sst2").train_mode == "classification"
    assert {n for n, t in TASKS.items() if t.train_mode == "lm"} == {"copa", "record", "squad", "drop"}
    assert {n for n, t in TASKS.items() if t.generation} == {"squad", "drop"}
    assert get_task("cb").num_dev == 100 and get_task("copa").num_dev == 100


def test_generation_references_keep_every_gold_answer():
    row, *_ = CASES["squad"]
    assert get_task("squad").render(row).references == ("a", "b")


@pytest.mark.parametrize("name", ["rte", "wic", "multirc", "record", "drop"])
def test_fixtures_load_and_render(name):
    rows = read_jsonl(FIXTURES / name / "train.jsonl", get_task(name))
    assert all(get_task(name).render(r).candidates for r in rows)


@pytest.mark.parametrize("name", ["sst2", "cb", "copa", "wsc", "boolq", "squad"])
def test_shared_data_renders_every_row(name):
    task = get_task(name)
    for split in ("train", "validation"):
        for row in read_jsonl(SHARED / name / f"{split}.jsonl", task):
            rendered = task.render(row)
            assert 0 <= rendered.gold < len(rendered.candidates)


def test_sampling_is_deterministic_for_a_seed_on_every_shared_task():
    def pick(seed):
        module = TaskDataModule("cb", tokenizer="tiny-llama", data_dir=str(SHARED), seed=seed, max_length=512)
        module.setup()
        return [e.sequences for e in module.splits["train"][:5]]

    assert pick(0) == pick(0) != pick(1)


def test_bad_row_in_a_task_specific_field(tmp_path):
    (tmp_path / "copa").mkdir()
    row = {"premise": "P.", "choice1": "a", "choice2": "b", "question": "why", "label": 0}
    (tmp_path / "copa" / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl:1: question 'why' is not 'cause' or 'effect'"):
        read_jsonl(tmp_path / "copa" / "train.jsonl", get_task("copa"))


def test_an_answer_that_cannot_fit_is_left_out_and_reported(caplog):
    module = TaskDataModule(
        "squad", tokenizer="tiny-llama", data_dir=str(SHARED), num_train=20, num_dev=10, num_eval=10, max_length=12
    )
    module.setup()
    assert module.left_out["train"] and len(module.splits["train"]) + len(module.left_out["train"]) == 20
    assert "left out" in caplog.text
