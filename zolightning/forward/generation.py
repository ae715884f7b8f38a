"""Greedy answers for generation tasks (SQuAD, DROP): decode, stop at a newline, score F1 / exact match."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.text import SQuAD

_NEWLINE_TOKENS: dict[int, list[int]] = {}


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens whose text holds a newline (a newline byte never sits inside another character, so a
    token holds one exactly when its text does). Built once per tokenizer."""
    if id(tokenizer) not in _NEWLINE_TOKENS:
        ids = list(range(len(tokenizer)))
        texts = tokenizer.batch_decode([[i] for i in ids])
        _NEWLINE_TOKENS[id(tokenizer)] = [i for i, text in zip(ids, texts) if "\n" in text]
    return _NEWLINE_TOKENS[id(tokenizer)]


def _stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """The model's own end tokens and every newline token: an answer ends at its first newline."""
    config = getattr(model, "generation_config", None)
    ends = getattr(config, "eos_token_id", None)
    ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
    return sorted(set(ends) | set(newline_token_ids(tokenizer)))


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, batch: dict, max_new_tokens: int = 50) -> list[str]:
    """Greedy continuation of each left-padded prompt, cut at the first newline and stripped.

    Decoding stops at newline tokens by id (what `stop_strings=["\\n"]` decides by matching text at every
    step, at a cost per step): the answers are the same, the batch ends as soon as every row has its newline.
    """
    generate = getattr(model, "prefix_generate", None) or model.generate  # prefix tuning: peft's (models/prefix.py)
    output = generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,  # one token of work per new token, batched over the prompts
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_stop_ids(model, tokenizer),
    )
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.split("\n", 1)[0].strip() for text in texts]


def update_squad(metric: SQuAD, predictions: list[str], references: list[list[str]]) -> None:
    """Add a batch to torchmetrics' SQuAD F1 / exact match (max over each example's gold answers)."""
    ids = [str(i) for i in range(len(predictions))]  # ids only pair predictions with targets within a call
    metric.update(
        [{"prediction_text": p, "id": i} for p, i in zip(predictions, ids)],
        [{"answers": {"text": refs, "answer_start": [0] * len(refs)}, "id": i} for refs, i in zip(references, ids)],
    )


def negative_f1(model: nn.Module, tokenizer, batch: dict, max_new_tokens: int = 50) -> torch.Tensor:
    """-(mean SQuAD F1) of greedy answers to a generation batch: a non-differentiable ZO objective."""
    from torchmetrics.functional.text import squad

    predictions = greedy_answers(model, tokenizer, batch, max_new_tokens)
    ids = [str(i) for i in range(len(predictions))]
    result = squad(
        [{"prediction_text": p, "id": i} for p, i in zip(predictions, ids)],
        [{"answers": {"text": r, "answer_start": [0] * len(r)}, "id": i} for r, i in zip(batch["references"], ids)],
    )
    return -result["f1"].to(batch["input_ids"].device) / 100
