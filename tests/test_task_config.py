"""Tasks defined in YAML: the same examples as the built-in tasks, new tasks from files, clear errors."""

import re
from pathlib import Path

import lightning as L
import pytest

from zolightning.data import DataError, TaskDataModule, get_task
from zolightning.data.sources import load_split
from zolightning.data.task_config import ConfigTask, TaskConfigError
from zolightning.modules import ZOFineTuneModule

REPO = Path(__file__).resolve().parents[1]
SST2_FILE = REPO / "configs" / "tasks" / "sst2.yaml"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "tasks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_task_file_loads(path):
    assert isinstance(get_task(str(path)), ConfigTask)


def _module(task, data_dir, **kwargs):
    options = dict(tokenizer="tiny-llama", data_dir=str(data_dir), num_train=32, num_dev=16, num_eval=24)
    data = TaskDataModule(task=task, **{**options, **kwargs})
    data.setup()
    return data


def test_the_yaml_sst2_gives_the_built_in_examples_and_accuracy(data_dir):
    builtin, config = get_task("sst2"), get_task(str(SST2_FILE))
    rows = load_split(builtin, "validation", str(data_dir))
    assert rows == load_split(config, "validation", str(data_dir))  # read through datasets: same rows, same order
    assert [builtin.render(r) for r in rows] == [config.render(r) for r in rows]
    a, b = _module("sst2", data_dir), _module(str(SST2_FILE), data_dir)
    assert a.splits == b.splits  # the same sampling and encoding: identical examples in every split
    scores = []
    for data in (a, b):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        scores.append(trainer.validate(ZOFineTuneModule(model="tiny-llama"), datamodule=data, verbose=False))
    without_timing = [{k: v for k, v in score[0].items() if not k.startswith("perf/")} for score in scores]
    assert without_timing[0] == without_timing[1]


def test_a_squad_like_generation_task_matches_the_built_in_prompts(tmp_path, data_dir):
    path = tmp_path / "squad.yaml"
    path.write_text(
        "name: squad\nmetric: f1\nstrip: false\nanswers_field: answers.text\n"
        'template: "Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:"\n'
    )
    builtin, config = get_task("squad"), get_task(str(path))
    rows = load_split(builtin, "validation", str(data_dir))[:50]
    assert [builtin.render(r) for r in rows] == [config.render(r) for r in rows]
    assert config.generation and config.train_mode == "lm"


def _topic_task(tmp_path, labels=(0, 1, 2, 1, 0, 2, 1, 0), extra: str = "") -> Path:
    texts = ["stocks fell", "the match ended", "a new chip", "goal scored", "bank rates", "quantum bit", "won", "ipo"]
    rows = "".join(f'"{t} today",{label}\n' for t, label in zip(texts, labels))
    (tmp_path / "topic").mkdir(exist_ok=True)
    for split in ("train", "test"):
        (tmp_path / "topic" / f"{split}.csv").write_text("text,label\n" + rows)
    path = tmp_path / "topic.yaml"
    path.write_text(
        "name: topic\n"
        'template: "Article: {text}\\nTopic:"\n'
        'candidates: [" business", " sports", " science"]\n'
        "num_dev: 4\n"
        "data: {format: csv, train: topic/train.csv, validation: topic/test.csv}\n" + extra
    )
    return path


def test_a_new_csv_task_trains_from_its_file_alone(tmp_path):
    from zolightning.cli.main import main

    path = _topic_task(tmp_path)
    args = ["fit", "--config", str(REPO / "configs/tiny/sst2_mezo.yaml"), "--data.task", str(path)]
    args += ["--data.num_train", "4", "--data.num_dev", "4", "--data.batch_size", "2", "--trainer.max_steps", "2"]
    args += ["--trainer.val_check_interval", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    main(args + ["--trainer.enable_progress_bar", "false"])
    assert (tmp_path / "logs" / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: t\ncandidates: [a, b]\n", "template"),
        ('name: t\ntemplate: "{x}"\ncandidates: [a, b]\nmetric: bleu\n', "metric"),
        ('name: t\ntemplate: "no fields"\ncandidates: [a, b]\n', "template"),
        ('name: t\ntemplate: "{x}"\n', "candidates"),
        ('name: t\ntemplate: "{x}"\ncandidates: [a, b]\nprompt: 1\n', "prompt"),
        ('name: t\ntemplate: "{x}"\nmetric: f1\n', "answers_field"),
        ('name: t\ntemplate: "{x}"\ncandidates: [a, b]\ndata: {format: xml, train: a, validation: b}\n', "data.format"),
        ('name: t\ntemplate: "{x}"\ncandidates: [a, b]\ndata: {train: a}\n', "data.validation"),
    ],
)
def test_a_bad_task_file_names_the_file_and_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TaskConfigError, match=rf"bad\.yaml: key '{key}'"):
        get_task(str(path))


def test_a_label_outside_the_candidates_names_the_file_and_row(tmp_path):
    path = _topic_task(tmp_path, labels=(0, 1, 2, 1, 0, 5, 1, 0))
    with pytest.raises(DataError, match=r"topic/train\.csv row 6: label 5 is not one of \[0, 1, 2\]"):
        load_split(get_task(str(path)), "train", None)


def test_a_row_without_a_template_field_names_it(tmp_path):
    path = _topic_task(tmp_path)
    path.write_text(path.read_text().replace("{text}", "{headline}"))
    with pytest.raises(DataError, match=r"row 1: missing field\(s\) headline"):
        load_split(get_task(str(path)), "train", None)


def test_an_f1_task_file_keeps_its_best_checkpoint_by_f1_with_the_default_settings(tmp_path, data_dir):
    from zolightning.cli.main import main

    path = tmp_path / "squad.yaml"
    path.write_text(
        "name: squad\nmetric: f1\nstrip: false\nanswers_field: answers.text\nnum_dev: 4\n"
        'template: "Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:"\n'
    )
    args = ["fit", "--config", "configs/tiny/sst2_mezo.yaml", "--data.task", str(path), "--data.data_dir"]
    args += [str(data_dir), "--data.num_train", "8", "--data.num_dev", "4", "--data.num_eval", "4"]
    args += ["--data.max_new_tokens", "3"]
    args += ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar"]
    args += ["false", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    main(args)
    saved = sorted(p.name for p in (tmp_path / "logs").glob("*/version_0/checkpoints/*.ckpt"))
    assert len(saved) == 2 and "last.ckpt" in saved, saved
    best = next(name for name in saved if name != "last.ckpt")
    assert re.fullmatch(r"step000002-f1\d\.\d{4}\.ckpt", best), saved


def _instruction_task(tmp_path, preset: str, rows: list[dict], extra: str = "") -> Path:
    import json

    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / f"{preset}.yaml"
    path.write_text(f"name: {preset}\npreset: {preset}\nnum_dev: 2\n" + extra)
    path.write_text(path.read_text() + "data: {train: train.jsonl, validation: validation.jsonl}\n")
    return path


def test_prompt_completion_rows_train_on_the_completion_and_score_by_generation(tmp_path):
    from zolightning.cli.main import main

    rows = [{"prompt": f"Q: {i} plus one?\nA:", "completion": f" {i + 1}"} for i in range(12)]
    task = _instruction_task(tmp_path, "prompt_completion", rows)
    data = TaskDataModule(task=str(task), tokenizer="tiny-llama", num_train=8, num_eval=4, batch_size=2)
    data.setup()
    example = data.splits["train"][0]
    assert example.references and example.answer_lengths[0] == len(example.references[0]) + 1  # bytes + "\n"
    args = ["fit", "--config", "configs/tiny/sst2_mezo.yaml", "--data.task", str(task), "--data.num_train", "8"]
    args += ["--data.num_dev", "2", "--data.num_eval", "2", "--data.max_new_tokens", "3", "--trainer.max_steps", "2"]
    args += ["--trainer.val_check_interval", "2", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(args)  # a generation task end to end: LM loss on the completion, val/f1 by greedy decoding


def test_messages_go_through_the_chat_template_and_the_last_turn_is_the_answer(tmp_path):
    turns = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    task = _instruction_task(tmp_path, "messages", [{"messages": turns}] * 6)
    data = TaskDataModule(task=str(task), tokenizer="smollm2-135m-instruct", num_train=4, num_eval=2, batch_size=2)
    data.setup()
    from zolightning.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    example = data.splits["train"][0]
    prompt = tokenizer.decode(example.sequences[0][: -example.answer_lengths[0]])
    answer = tokenizer.decode(example.sequences[0][-example.answer_lengths[0] :])
    assert "<|im_start|>user\nName a colour.<|im_end|>" in prompt and prompt.rstrip().endswith("assistant")
    assert answer.strip() == "Blue."
    with pytest.raises(ValueError, match="chat template"):  # the tiny byte tokenizer has none
        TaskDataModule(task=str(task), tokenizer="tiny-llama", num_train=4, num_eval=2, batch_size=2).setup()


def test_a_conversation_without_an_answer_is_named_by_row(tmp_path):
    turns = [{"role": "user", "content": "Hi"}]
    task = _instruction_task(tmp_path, "messages", [{"messages": turns}])
    with pytest.raises(DataError, match=r"row 1: messages must end with an assistant turn"):
        TaskDataModule(task=str(task), tokenizer="smollm2-135m-instruct", num_train=1, num_eval=1).setup()


HARNESS_SST2 = """task: sst2_harness
dataset_path: json
dataset_kwargs:
  data_files: {train: train.jsonl, validation: validation.jsonl}
output_type: multiple_choice
doc_to_text: "{{sentence}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
doc_to_choice: ["negative", "positive"]
doc_to_target: label
metric_list:
  - metric: acc
"""


def _harness_files(tmp_path, text: str, rows: list[dict]) -> Path:
    import json

    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(text)
    return tmp_path / "task.yaml"


def test_an_lm_eval_harness_file_is_read_as_it_is(tmp_path, data_dir):
    rows = load_split(get_task("sst2"), "validation", str(data_dir))[:30]
    task = get_task(str(_harness_files(tmp_path, HARNESS_SST2, rows)))
    assert task.name == "sst2_harness" and not task.generation
    example = task.render(rows[0])
    question = "\nQuestion: Is this sentence positive or negative?\nAnswer:"
    assert example.prompt == rows[0]["sentence"] + question
    assert example.candidates == (" negative", " positive") and example.gold == rows[0]["label"]
    data = TaskDataModule(task=str(tmp_path / "task.yaml"), tokenizer="tiny-llama", num_train=8, num_dev=4)
    data.setup()
    assert len(data.splits["eval"]) == 30


def test_a_generate_until_harness_task_answers_by_jinja_target(tmp_path):
    text = (
        "task: qa\ndataset_path: json\ndataset_kwargs: {data_files: {train: train.jsonl, validation: validation.jsonl}}"
        '\noutput_type: generate_until\ndoc_to_text: "{{context}}\\nQ: {{question}}\\nA:"\n'
        'doc_to_target: "{{answers.text[0]}}"\ngeneration_kwargs: {until: ["\\n"]}\n'
    )
    rows = [{"context": "Paris is in France.", "question": "Where?", "answers": {"text": ["France"]}}] * 4
    task = get_task(str(_harness_files(tmp_path, text, rows)))
    example = task.render(rows[0])
    assert task.generation and example.prompt == "Paris is in France.\nQ: Where?\nA:"
    assert example.candidates == (" France\n",) and example.references == ("France",)


def test_a_harness_row_outside_the_choices_is_named_and_python_hooks_refused(tmp_path):
    rows = [{"sentence": "fine", "label": 1}] * 3 + [{"sentence": "odd", "label": 5}]
    path = _harness_files(tmp_path, HARNESS_SST2, rows)
    with pytest.raises(DataError, match=r"train.jsonl row 4: cannot be rendered.*doc_to_target gave 5"):
        TaskDataModule(task=str(path), tokenizer="tiny-llama", num_train=2, num_dev=1).setup()
    path.write_text(HARNESS_SST2 + "process_docs: !function utils.process_docs\n")
    with pytest.raises(ValueError, match="process_docs|function"):
        get_task(str(path))
