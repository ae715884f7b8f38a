"""Greedy answers for generation tasks (SQuAD, DROP): decode, stop at a newline, score F1 / exact match."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.text import SQuAD


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, batch: dict, max_new_tokens: int = 50) -> list[str]:
    """Greedy continuation of each left-padded prompt, cut at the first newline and stripped."""
    output = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,  # one token of work per new token, batched over the prompts
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=["\n"],
        tokenizer=tokenizer,
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
