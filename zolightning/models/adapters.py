"""PEFT by name (`--model.peft lora|prefix`): the inner model the run trains, and peft's wrapper beside it."""

from __future__ import annotations

from torch import nn

from zolightning.models.lora import add_lora
from zolightning.models.prefix import add_prefix

PEFT_KINDS = ("none", "lora", "prefix")


def add_adapters(
    model: nn.Module,
    kind: str,
    lora_r: int = 8,
    lora_alpha: float = 16,
    lora_target_modules: list[str] | None = None,
    prefix_tokens: int = 20,
    lora_dtype: str = "model",
):
    """(the model whose trainable tensors ZO perturbs, the PeftModel or None)."""
    if kind not in PEFT_KINDS:
        raise ValueError(f"peft must be one of {PEFT_KINDS}, got {kind!r}")
    if kind == "lora":
        return add_lora(model, lora_r, lora_alpha, lora_target_modules, dtype=lora_dtype)
    if kind == "prefix":
        return add_prefix(model, prefix_tokens)
    return model, None


def adapter_summary(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    share = 100 * trainable / total
    return f"adapters: {trainable:,} trainable weights in {tensors} tensors ({share:.2f}% of {total:,})"
