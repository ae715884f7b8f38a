"""LoRA adapters through `peft`: ZO then perturbs and updates only the adapter tensors.

`add_lora` wraps the model in peft's `PeftModel` and hands back the inner causal LM, in which peft has
replaced the targeted linear layers by LoRA layers (base weights frozen, `lora_A`/`lora_B` trainable). Every
forward of the project (scoring, generation, the compiled trunk) runs on that inner model unchanged; the
`PeftModel` is kept beside it for the merged export (`merge_and_unload`).
"""

from __future__ import annotations

from torch import nn

# MeZO's LoRA setting (Malladi et al. 2023, appendix): r 8, alpha 16 on the attention query and value.
DEFAULT_TARGETS = ("q_proj", "v_proj")


class LoraConfigError(ValueError):
    """LoRA options that cannot apply to this model; the message names the option."""


def add_lora(
    model: nn.Module, r: int = 8, alpha: float = 16, target_modules: list[str] | None = None, dropout: float = 0.0
):
    """(the inner model with LoRA layers, the PeftModel around it)."""
    from peft import LoraConfig, get_peft_model

    if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise LoraConfigError(f"need lora_r >= 1, lora_alpha > 0, 0 <= lora_dropout < 1; got {r}, {alpha}, {dropout}")
    targets = list(target_modules or DEFAULT_TARGETS)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise LoraConfigError(
            f"lora_target_modules {missing} are not modules of this model; its linear layers: {linear}"
        )
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout, task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)
    return wrapped.get_base_model(), wrapped
