"""Tokenize rendered examples and collate them into scoring batches.

A batch names, for every answer token to score, the row and column of the logit that predicts it
(`pred_rows`, `pred_cols`), the token (`pred_tokens`) and the score slot it adds to (`pred_slots`:
example * max_candidates + candidate). One forward of `input_ids` then scores all candidates, and
only the logits at those positions are ever computed.

When every candidate is one token after the same prefix (SST-2's " terrible"/" great"), the example
needs one sequence, not one per candidate: the prediction positions just coincide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from zolightning.data.tasks import RenderedExample


class AnswerTooLongError(ValueError):
    """A candidate answer cannot fit in max_length whatever the prompt: the example is reported and left out."""


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of each candidate's full sequence (prompt + answer) and its answer length."""

    sequences: tuple[tuple[int, ...], ...]
    answer_lengths: tuple[int, ...]
    gold: int
    truncated: bool
    references: tuple[str, ...] = ()  # gold answers of generation tasks
    row: int = -1  # the row's index in its split file (what predictions name)
    candidates: tuple[str, ...] = ()  # the answers' text, for predictions

    @property
    def shares_prefix(self) -> bool:
        """True when all candidates are a single token after an identical prompt."""
        if any(n != 1 for n in self.answer_lengths):
            return False
        prefix = self.sequences[0][:-1]
        return all(s[:-1] == prefix for s in self.sequences)


def _left_truncate(ids: list[int], max_length: int, keep_first: bool) -> list[int]:
    if len(ids) <= max_length:
        return ids
    if keep_first:
        return ids[:1] + ids[len(ids) - max_length + 1 :]
    return ids[len(ids) - max_length :]


def encode_example(tokenizer, example: RenderedExample, max_length: int, index: int = 0) -> EncodedExample:
    """Answer tokens are those of (prompt + answer) beyond the prompt's own; prompts are cut on the left."""
    prompt_length = len(tokenizer(example.prompt).input_ids)
    keep_first = tokenizer.bos_token_id is not None
    sequences, answer_lengths, truncated = [], [], False
    for candidate in example.candidates:
        ids = tokenizer(example.prompt + candidate).input_ids
        answer_length = len(ids) - prompt_length
        if answer_length < 1:
            raise ValueError(f"example {index}: candidate {candidate!r} adds no token to the prompt")
        if answer_length > max_length - 1:
            raise AnswerTooLongError(
                f"example {index}: candidate {candidate!r} has {answer_length} tokens, which cannot fit "
                f"with any prompt in max_length={max_length}"
            )
        keep = keep_first and ids[0] == tokenizer.bos_token_id
        cut = _left_truncate(ids, max_length, keep)
        truncated |= len(cut) < len(ids)
        sequences.append(tuple(cut))
        answer_lengths.append(answer_length)
    return EncodedExample(
        tuple(sequences), tuple(answer_lengths), example.gold, truncated, example.references, index, example.candidates
    )


def through_chat_template(tokenizer, example: RenderedExample) -> RenderedExample:
    """The prompt as the tokenizer's chat template writes it (the conversation, or one user turn of the prompt),
    ready for the assistant's answer; a tokenizer without a template is refused."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true needs a tokenizer with a chat template (an instruct model's)")
    turns = list(example.messages) or [{"role": "user", "content": example.prompt}]
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return replace(example, prompt=prompt)


def as_lm_example(example: EncodedExample) -> EncodedExample:
    """The gold candidate alone: LM-style training scores only the gold answer's tokens."""
    g = example.gold
    sequences, lengths = (example.sequences[g],), (example.answer_lengths[g],)
    return EncodedExample(sequences, lengths, 0, example.truncated, example.references, example.row)


def collate(examples: list[EncodedExample], pad_id: int, kind: str = "classification") -> dict:
    """Right-padded scoring batch (see the module docstring for the layout)."""
    max_candidates = max(len(e.sequences) for e in examples)
    fold = all(e.shares_prefix for e in examples)
    rows: list[tuple[int, ...]] = []
    pred_rows, pred_cols, pred_tokens, pred_slots = [], [], [], []
    for b, example in enumerate(examples):
        if fold:
            rows.append(example.sequences[0][:-1])
        for c, (ids, answer_length) in enumerate(zip(example.sequences, example.answer_lengths)):
            if not fold:
                rows.append(ids)
            for position in range(len(ids) - answer_length, len(ids)):
                pred_rows.append(len(rows) - 1)
                pred_cols.append(position - 1)
                pred_tokens.append(ids[position])
                pred_slots.append(b * max_candidates + c)
    # Filled through numpy: torch.tensor on Python lists made collation 6x slower (benchmarks/collate_time.py),
    # and collation runs on the training loop's thread, between steps of a few milliseconds.
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = ids
    lengths = torch.from_numpy(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
    counts = torch.from_numpy(np.fromiter((len(e.sequences) for e in examples), dtype=np.int64, count=len(examples)))
    pred = torch.from_numpy(np.array([pred_rows, pred_cols, pred_tokens, pred_slots], dtype=np.int64))
    return {
        "kind": kind,
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
        "pred_rows": pred[0],
        "pred_cols": pred[1],
        "pred_tokens": pred[2],
        "pred_slots": pred[3],
        "candidate_mask": torch.arange(max_candidates) < counts[:, None],
        "gold": torch.from_numpy(np.fromiter((e.gold for e in examples), dtype=np.int64, count=len(examples))),
        "rows": torch.from_numpy(np.fromiter((e.row for e in examples), dtype=np.int64, count=len(examples))),
    }


def collate_generation(
    examples: list[EncodedExample], pad_id: int, max_prompt_length: int, keep_first: bool = False
) -> dict:
    """Left-padded prompts (the gold answer removed) and their references, for greedy decoding."""
    prompts = []
    for example in examples:
        ids = list(example.sequences[example.gold][: -example.answer_lengths[example.gold]])
        prompts.append(_left_truncate(ids, max_prompt_length, keep_first))
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return {
        "kind": "generate",
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "references": [list(e.references) for e in examples],
        "rows": torch.tensor([e.row for e in examples], dtype=torch.long),
    }


def with_candidates(collate_fn):
    """`collate_fn` whose batches also carry each example's answer texts (`candidates`), for predictions."""

    def collate_with_candidates(examples: list[EncodedExample]) -> dict:
        return {**collate_fn(examples), "candidates": [list(e.candidates) for e in examples]}

    return collate_with_candidates


def scoring_rows(examples: list[EncodedExample]) -> tuple[int, list[int]]:
    """(the most rows one example adds to a `collate` batch, each example's widest row): what shape planning
    needs to know. Rows fold to one per example only when every example of the batch shares its prefix."""
    if all(e.shares_prefix for e in examples):
        return 1, [len(e.sequences[0]) - 1 for e in examples]
    return max(len(e.sequences) for e in examples), [max(len(s) for s in e.sequences) for e in examples]
