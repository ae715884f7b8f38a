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


ADAPTER_ONLY = "zo_adapter_only"  # a checkpoint key: its state_dict holds the trained tensors alone


def keep_trained_tensors(checkpoint: dict, module: nn.Module) -> None:
    """An adapter run's checkpoint keeps its trained tensors only (the base weights are rebuilt from `model.model`
    on load): a SmolLM2 LoRA checkpoint shrinks from the whole model, about 514 MB, to the adapters."""
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
    checkpoint[ADAPTER_ONLY] = True


def restore_base_tensors(checkpoint: dict, module: nn.Module) -> None:
    """Complete an adapter-only state_dict with the module's own (freshly loaded) base weights, after checking that
    it holds every tensor the module trains and nothing the module does not have."""
    if not checkpoint.get(ADAPTER_ONLY):
        return
    own, saved = module.state_dict(), checkpoint["state_dict"]
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    missing, foreign = sorted(trained - set(saved)), sorted(set(saved) - set(own))
    if missing or foreign:
        problem = f"lacks {missing[:3]}" if missing else f"has tensors this model does not: {foreign[:3]}"
        raise ValueError(f"the adapter checkpoint does not fit this model (peft/lora settings?): it {problem}")
    checkpoint["state_dict"] = {**own, **saved}
