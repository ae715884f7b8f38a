"""SQuAD-style F1 / exact match on hand-computed cases, and greedy decoding on the tiny model."""

import pytest
from torchmetrics.text import SQuAD

from zolightning.data import get_task
from zolightning.data.encoding import collate_generation, encode_example
from zolightning.forward.generation import greedy_answers, update_squad
from zolightning.models import load_causal_lm, load_tokenizer


def _score(prediction, references):
    metric = SQuAD()
    update_squad(metric, [prediction], [references])
    result = metric.compute()
    return result["exact_match"].item() / 100, result["f1"].item() / 100


@pytest.mark.parametrize(
    ("prediction", "references", "em", "f1"),
    [
        ("Denver Broncos.", ["Denver Broncos"], 1.0, 1.0),  # punctuation
        ("the Broncos", ["Broncos"], 1.0, 1.0),  # articles
        ("DENVER  broncos", ["Denver Broncos"], 1.0, 1.0),  # case and white space
        ("Denver", ["Denver Broncos"], 0.0, 2 / 3),  # precision 1, recall 1/2
        ("Carolina", ["Denver Broncos", "Carolina Panthers"], 0.0, 2 / 3),  # max over gold answers
        ("", ["Denver Broncos"], 0.0, 0.0),  # empty prediction
    ],
)
def test_f1_and_exact_match(prediction, references, em, f1):
    got_em, got_f1 = _score(prediction, references)
    assert got_em == pytest.approx(em) and got_f1 == pytest.approx(f1, abs=1e-4)


def test_batched_scores_average_over_examples():
    metric = SQuAD()
    update_squad(metric, ["a b", "zzz"], [["a b"], ["c"]])
    update_squad(metric, ["c"], [["c"]])
    assert metric.compute()["exact_match"].item() == pytest.approx(200 / 3)


def test_greedy_answers_are_left_padded_prompts_continued_without_newlines():
    tokenizer, model = load_tokenizer("tiny-llama"), load_causal_lm("tiny-llama")
    task = get_task("squad")
    rows = [
        {"title": "T", "context": "C" * n, "question": "Q?", "answers": {"text": ["x"], "answer_start": [0]}}
        for n in (3, 30)
    ]
    examples = [encode_example(tokenizer, task.render(r), max_length=64) for r in rows]
    batch = collate_generation(examples, pad_id=tokenizer.pad_token_id, max_prompt_length=56)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # padded on the left
    assert tokenizer.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()]).endswith("Answer:")
    answers = greedy_answers(model, tokenizer, batch, max_new_tokens=8)
    assert len(answers) == 2 and all("\n" not in a and len(a.encode()) <= 8 for a in answers)
    alone = greedy_answers(model, tokenizer, collate_generation(examples[:1], tokenizer.pad_token_id, 56), 8)
    assert alone[0] == answers[0]  # left padding does not change a prompt's greedy answer


def test_stopping_at_newline_tokens_gives_the_answers_of_hf_stop_strings():
    import torch

    from zolightning.forward.generation import newline_token_ids

    tokenizer, model = load_tokenizer("tiny-llama"), load_causal_lm("tiny-llama")
    stops = newline_token_ids(tokenizer)
    assert stops and all("\n" in tokenizer.decode([i]) for i in stops)
    assert tokenizer.encode("a\nb", add_special_tokens=False)[1] in stops or "\n" in tokenizer.decode(
        tokenizer.encode("a\nb", add_special_tokens=False)[:2]
    )
    task = get_task("squad")
    rows = [
        {"title": "T", "context": f"C{n} " * n, "question": "Q?", "answers": {"text": ["x"], "answer_start": [0]}}
        for n in range(1, 13)
    ]
    examples = [encode_example(tokenizer, task.render(r), max_length=96) for r in rows]
    batch = collate_generation(examples, pad_id=tokenizer.pad_token_id, max_prompt_length=90)
    # a random model rarely says a newline: a long newline row makes its logit large (either sign) at many steps
    with torch.no_grad():
        model.lm_head.weight[stops] *= 6
    by_text = model.generate(
        **{k: batch[k] for k in ("input_ids", "attention_mask")}, max_new_tokens=24, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, stop_strings=["\n"], tokenizer=tokenizer,
    )  # fmt: skip
    expected = [t.split("\n", 1)[0].strip() for t in tokenizer.batch_decode(by_text[:, batch["input_ids"].shape[1] :])]
    assert greedy_answers(model, tokenizer, batch, max_new_tokens=24) == expected
    assert 0 < sum(len(a) < 20 for a in expected) < len(expected)  # some rows stopped early, some did not
