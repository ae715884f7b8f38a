import json

import pytest
import torch

from zolightning.data import DataError, TaskDataModule, get_task
from zolightning.data.encoding import EncodedExample, collate, encode_example
from zolightning.data.sampling import StepIndexedStream, sample_splits
from zolightning.data.sources import read_jsonl
from zolightning.data.tasks import RenderedExample
from zolightning.models import load_tokenizer


def test_sst2_prompt_and_label_mapping():
    rendered = get_task("sst2").render({"sentence": "a gorgeous film ", "label": 1})
    assert rendered == RenderedExample("a gorgeous film It was", (" terrible", " great"), 1)
    assert get_task("SST2").render({"sentence": "dull ", "label": 0}).gold == 0


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'nope'.*sst2"):
        get_task("nope")


def test_sampling_is_deterministic_and_disjoint():
    a = sample_splits(5000, 872, 1000, 500, 1000, seed=0)
    b = sample_splits(5000, 872, 1000, 500, 1000, seed=0)
    c = sample_splits(5000, 872, 1000, 500, 1000, seed=1)
    assert a == b and a.train != c.train
    assert len(a.train) == 1000 and len(a.dev) == 500 and a.eval == list(range(872))
    assert not set(a.train) & set(a.dev)
    small = sample_splits(250, 2000, 1000, 100, 1000, seed=0)
    assert len(small.train) == 150 and len(small.eval) == 1000 and small.eval == sorted(small.eval)


def test_datamodule_sizes_on_real_sst2(tiny_data):
    module = tiny_data(num_train=1000, num_dev=500, num_eval=1000)
    assert [len(module.splits[s]) for s in ("train", "dev", "eval")] == [1000, 500, 872]


def test_step_stream_shards_the_combined_batch():
    examples = list(range(10))
    single = StepIndexedStream(examples, list, batch_size=4, seed=0)
    ranks = [StepIndexedStream(examples, list, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(7):  # crosses several passes over the data
        combined = ranks[0].indices(step) + ranks[1].indices(step)
        assert combined == single.indices(step)
    resumed = StepIndexedStream(examples, list, batch_size=4, seed=0, start_step=3)
    assert next(iter(resumed)) == single.indices(3)


def test_each_pass_is_a_permutation():
    stream = StepIndexedStream(list(range(12)), list, batch_size=4, seed=3)
    assert sorted(stream.indices(0) + stream.indices(1) + stream.indices(2)) == list(range(12))


# ---- bad input: every message names the file and line ------------------------------------------
def _write(tmp_path, lines, split="train"):
    folder = tmp_path / "sst2"
    folder.mkdir(exist_ok=True)
    path = folder / f"{split}.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"sst2/train.jsonl does not exist"):
        read_jsonl(tmp_path / "sst2" / "train.jsonl", get_task("sst2"))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = _write(tmp_path, [json.dumps({"sentence": "ok", "label": 1}), json.dumps({"sentence": "no label"})])
    with pytest.raises(DataError, match=rf"{path}:2: missing field\(s\) label"):
        read_jsonl(path, get_task("sst2"))


def test_label_outside_the_label_set(tmp_path):
    path = _write(tmp_path, [json.dumps({"sentence": "ok", "label": 2})])
    with pytest.raises(DataError, match=rf"{path}:1: label 2 is not one of \[0, 1\]"):
        read_jsonl(path, get_task("sst2"))


def test_invalid_json_and_empty_split(tmp_path):
    path = _write(tmp_path, ['{"sentence": "ok", "label": 1}', "{oops"])
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_jsonl(path, get_task("sst2"))
    empty = _write(tmp_path, [], split="validation")
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(empty, get_task("sst2"))


def test_datamodule_reports_bad_data_dir(tmp_path):
    module = TaskDataModule(task="sst2", tokenizer="tiny-llama", data_dir=str(tmp_path / "absent"))
    with pytest.raises(DataError, match="is not a directory"):
        module.setup()


# ---- encoding ----------------------------------------------------------------------------------
def test_left_truncation_keeps_the_first_token_and_the_answer():
    tokenizer = load_tokenizer("tiny-llama")
    tokenizer_bos = tokenizer.bos_token_id
    example = RenderedExample("x" * 100 + " It was", (" terrible", " great"), 0)
    encoded = encode_example(tokenizer, example, max_length=20)
    assert encoded.truncated
    for ids, n in zip(encoded.sequences, encoded.answer_lengths):
        assert len(ids) == 20
        assert tokenizer.decode(ids[-n:]) in (" terrible", " great")
    # The byte tokenizer adds no BOS; with one, the first token is kept.
    assert tokenizer_bos is not None and encoded.sequences[0][0] != tokenizer_bos
    with pytest.raises(ValueError, match="cannot fit"):
        encode_example(tokenizer, example, max_length=5)


def test_collate_layout_points_at_the_answer_tokens():
    examples = [EncodedExample(((5, 6, 7), (5, 6, 8, 9)), (1, 2), gold=1, truncated=False)]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 8, 9]]
    assert batch["pred_rows"].tolist() == [0, 1, 1]
    assert batch["pred_cols"].tolist() == [1, 1, 2]
    assert batch["pred_tokens"].tolist() == [7, 8, 9]
    assert batch["pred_slots"].tolist() == [0, 1, 1]


def test_single_token_candidates_share_one_sequence():
    examples = [EncodedExample(((5, 6, 7), (5, 6, 8)), (1, 1), gold=0, truncated=False)]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6]]
    assert batch["pred_rows"].tolist() == [0, 0] and batch["pred_cols"].tolist() == [1, 1]
    assert batch["pred_tokens"].tolist() == [7, 8]
    assert torch.equal(batch["candidate_mask"], torch.tensor([[True, True]]))


def test_task_schedule_visits_every_task_once_per_cycle():
    from zolightning.data.sampling import task_schedule

    assert [task_schedule(3, s, 0, shuffled=False) for s in range(6)] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    shuffled = [task_schedule(3, s, 0, shuffled=True)[0] for s in range(30)]
    assert all(sorted(shuffled[i : i + 3]) == [0, 1, 2] for i in range(0, 30, 3))
    assert shuffled[:15] != [0, 1, 2] * 5


def test_multitask_datamodule_alternates_tasks_and_names_splits(tiny_multitask):
    module = tiny_multitask(["copa", "sst2"])
    batches = iter(module.train_dataloader())
    first, second, third = next(batches), next(batches), next(batches)
    assert [first["task"], second["task"], third["task"]] == ["copa", "sst2", "copa"]
    assert first["kind"] == "lm" and second["kind"] == "classification"
    assert module.val_split_names() == ["dev:copa", "dev:sst2"] and len(module.val_dataloader()) == 2
