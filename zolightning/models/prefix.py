"""Prefix tuning through `peft`: trainable key/value prefixes at every layer; ZO perturbs only them.

peft applies a prefix inside `PeftModel.forward`, while every forward of the project runs on the inner causal LM
(scoring splits trunk and head; see `scoring.py`). So `add_prefix` registers peft's prompt encoder under the inner
model (it is then optimized, checkpointed and counted like any weight of the run) and keeps peft's `get_prompt`
beside it; `prefix_inputs` turns a batch into the forward's arguments with peft's prefix cache and the attention
mask widened by the prefix, exactly what `PeftModel.forward` passes (a test compares the logits). Generation goes
through the `PeftModel`'s `generate` (`prefix_generate`), which handles the prefix itself. The compiled forward
takes no prefix cache: prefix-tuned runs score eagerly (`fast_path.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def add_prefix(model: nn.Module, num_virtual_tokens: int = 20):
    """(the inner model carrying the prefix, the PeftModel around it)."""
    from peft import PrefixTuningConfig, get_peft_model

    if num_virtual_tokens < 1:
        raise ValueError(f"prefix_tokens must be >= 1, got {num_virtual_tokens}")
    wrapper = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens))
    inner = wrapper.get_base_model()
    inner.add_module("prefix_encoder", wrapper.prompt_encoder)  # shared with the wrapper: one set of weights
    inner.prefix_prompt = wrapper.get_prompt  # bound methods, not modules: no cycle in the module tree
    inner.prefix_generate = wrapper.generate
    inner.prefix_length = num_virtual_tokens
    return inner, wrapper


def has_prefix(model: nn.Module) -> bool:
    return getattr(model, "prefix_prompt", None) is not None


def prefix_inputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> dict:
    """The forward's keyword arguments for a batch: with a prefix, its key/value cache and the widened mask.
    Without one, no cache: a scoring forward never decodes further, and a cache would keep every layer's keys and
    values alive to the end of the forward (and make them outputs of a compiled one)."""
    if not has_prefix(model):
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    rows = input_ids.shape[0]
    widened = torch.cat([attention_mask.new_ones(rows, model.prefix_length), attention_mask], dim=1)
    return {"input_ids": input_ids, "attention_mask": widened, "past_key_values": model.prefix_prompt(batch_size=rows)}
