"""`zolightning predict`: a line per row, the same answers `test` scores, rows of a file, generated answers."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _zolightning(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zolightning", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _tiny(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--config", "configs/tiny/sst2_mezo.yaml", "--data.data_dir", str(data_dir)] + [
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_of_a_checkpoint_are_the_answers_test_scores(tmp_path, data_dir):
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    _zolightning("fit", *_tiny(tmp_path, data_dir, *logs, "--trainer.max_steps", "4"))
    ckpt = tmp_path / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "predictions.jsonl"
    writer = [
        "--trainer.callbacks+=zolightning.callbacks.predictions.PredictionWriter",
        "--trainer.callbacks.path",
        str(out),
    ]
    _zolightning("predict", *_tiny(tmp_path, data_dir, *logs, *writer, "--ckpt_path", str(ckpt)))
    lines = _lines(out)
    assert len(lines) == 32 and len({line["row"] for line in lines}) == 32  # num_eval of the tiny config
    assert all(line["answer"] in (" terrible", " great") and len(line["scores"]) == 2 for line in lines)
    accuracy = sum(line["prediction"] == line["gold"] for line in lines) / len(lines)
    tested = _zolightning("test", *_tiny(tmp_path, data_dir, *logs, "--ckpt_path", str(ckpt)))
    scored = re.search(r"test/acc\W+([\d.]+)", tested.stdout)
    assert scored and abs(float(scored.group(1)) - accuracy) < 1e-6, (accuracy, tested.stdout[-1500:])


def test_rows_of_a_file_are_answered_in_order(tmp_path, data_dir):
    rows = tmp_path / "mine.jsonl"
    texts = ["a triumph", "a dull mess", "fine"]
    rows.write_text("".join(json.dumps({"sentence": t, "label": 1}) + "\n" for t in texts))
    out = tmp_path / "p.jsonl"
    writer = [
        "--trainer.callbacks+=zolightning.callbacks.predictions.PredictionWriter",
        "--trainer.callbacks.path",
        str(out),
    ]
    own = ["--trainer.logger", "false", "--data.predict_file", str(rows), *writer]
    _zolightning("predict", *_tiny(tmp_path, data_dir, *own))
    assert [line["row"] for line in _lines(out)] == [0, 1, 2]


def test_a_generation_task_writes_the_generated_answers(tmp_path, data_dir):
    task = ["--data.task", "squad", "--data.num_train", "8", "--data.num_dev", "4", "--data.num_eval", "3"]
    task += ["--data.max_new_tokens", "3", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    _zolightning("predict", *_tiny(tmp_path, data_dir, *task))
    lines = _lines(next(tmp_path.glob("*/version_0/predictions.jsonl")))
    assert len(lines) == 3 and all(isinstance(line["answer"], str) and line["references"] for line in lines)


def test_generate_answers_each_prompt_from_a_checkpoint(tmp_path, data_dir):
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    _zolightning("fit", *_tiny(tmp_path, data_dir, *logs, "--trainer.max_steps", "2"))
    ckpt = tmp_path / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fine film\n\nthe plot\n")
    result = _zolightning("generate", str(ckpt), "first", "--file", str(prompts), "--max-new-tokens", "4")
    assert len(result.stdout.splitlines()) == 3  # one answer a prompt (blank lines are not prompts)


def test_the_chat_template_wraps_a_prompt_where_the_tokenizer_has_one():
    from zolightning.cli.generate import as_model_input
    from zolightning.models import load_tokenizer

    smollm2 = load_tokenizer("smollm2-135m-instruct")
    wrapped = as_model_input(smollm2, "What is 2+2?", raw=False)
    assert "What is 2+2?" in wrapped and wrapped.rstrip().endswith("assistant") and "<|im_start|>user" in wrapped
    assert as_model_input(smollm2, "What is 2+2?", raw=True) == "What is 2+2?"
    assert as_model_input(load_tokenizer("tiny-llama"), "x", raw=False) == "x"  # no template: as it is
