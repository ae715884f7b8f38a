"""Losses and predictions from a scoring batch (layout: zolightning/data/encoding.py).

The LM head is applied only at the positions that predict an answer token: for SmolLM2 that is one
576 x 49152 product per candidate instead of one per token of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zolightning.models.prefix import prefix_inputs
from zolightning.optim.engine.shards import is_sharded


def hidden_then_head(model: nn.Module):
    """(trunk, head) when logits are exactly head(trunk(x)); None for models that post-process logits."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or hasattr(model, "logit_scale"):
        return None
    trunk = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if trunk is None or trunk is model or head is None:
        return None
    if is_sharded(head.weight):  # FSDP2 gathers the root's weights (head, embeddings) in the root's forward only
        return None
    return trunk, head


def answer_logprobs(model: nn.Module, batch: dict, branches: int = 1) -> Tensor:
    """log p(token) for every answer token in the batch, in float32 or wider, shape [branches * num_pred].

    `branches=2`: the batch enters twice over (rows [0, B) then [B, 2B)) in one forward, as a streamed model's
    two-branch step reads it (`offload/units.py`); the answer tokens of the first copy come first."""
    rows, cols = batch["pred_rows"], batch["pred_cols"]
    split = hidden_then_head(model)
    ids, mask, tokens = batch["input_ids"], batch["attention_mask"], batch["pred_tokens"]
    if branches > 1:  # (the one-branch forward of every resident step copies nothing)
        size = ids.shape[0]
        ids, mask = ids.repeat(branches, 1), mask.repeat(branches, 1)
        rows, cols = torch.cat([rows + b * size for b in range(branches)]), cols.repeat(branches)
        tokens = tokens.repeat(branches)
    inputs = prefix_inputs(model, ids, mask)
    if split is None:
        logits = model(**inputs).logits[rows, cols]
    else:
        trunk, head = split
        hidden = trunk(**inputs).last_hidden_state
        logits = head(hidden[rows, cols])
    logprobs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)


def candidate_scores(token_logprobs: Tensor, batch: dict) -> Tensor:
    """Mean answer-token log-probability per candidate, [batch, max_candidates]; -inf where absent."""
    mask = batch["candidate_mask"]
    slots = batch["pred_slots"]
    # dtype given explicitly: under bf16-true the default dtype is bfloat16.
    zeros = torch.zeros(mask.numel(), device=token_logprobs.device, dtype=token_logprobs.dtype)
    total = zeros.index_add(0, slots, token_logprobs)
    count = zeros.index_add(0, slots, torch.ones_like(token_logprobs))
    scores = (total / count.clamp(min=1)).view_as(mask)
    return scores.masked_fill(~mask, float("-inf"))


def batch_loss(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor | None]:
    """(loss, candidate scores or None). Classification: cross-entropy over the candidates' scores;
    LM: mean cross-entropy of the gold answer tokens."""
    return loss_of(answer_logprobs(model, batch), batch)


def loss_of(token_logprobs: Tensor, batch: dict) -> tuple[Tensor, Tensor | None]:
    if batch["kind"] == "lm":
        return -token_logprobs.mean(), None
    scores = candidate_scores(token_logprobs, batch)
    return F.cross_entropy(scores, batch["gold"]), scores


def branch_objectives(model: nn.Module, batch: dict, objective: str = "loss") -> Tensor:
    """[L+, L−]: the objective on each branch of one two-branch forward (a streamed model's ZO step)."""
    values = []
    for token_logprobs in answer_logprobs(model, batch, branches=2).chunk(2):
        loss, scores = loss_of(token_logprobs, batch)
        if objective == "accuracy":
            loss = -(scores.argmax(dim=-1) == batch["gold"]).float().mean()
        values.append(loss)
    return torch.stack(values)


def batch_weight(batch: dict) -> int:
    """What a batch's objective averages over: answer tokens for LM batches, examples otherwise (accumulation
    weighs micro-batches by it, so k micro-batches give the loss of the batch they make up)."""
    if batch["kind"] == "lm":
        return batch["pred_tokens"].numel()
    return len(batch["gold"]) if "gold" in batch else batch["input_ids"].shape[0]


def negative_accuracy(model: nn.Module, batch: dict) -> Tensor:
    """-(candidate accuracy) of a classification batch: a non-differentiable ZO objective."""
    scores = candidate_scores(answer_logprobs(model, batch), batch)
    return -(scores.argmax(dim=-1) == batch["gold"]).float().mean()
