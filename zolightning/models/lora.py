"""LoRA adapters through `peft`: ZO then perturbs and updates only the adapter tensors.

`add_lora` wraps the model in peft's `PeftModel` and hands back the inner causal LM, in which peft has
replaced the targeted linear layers by LoRA layers (base weights frozen, `lora_A`/`lora_B` trainable). Every
forward of the project (scoring, generation, the compiled trunk) runs on that inner model unchanged; the
`PeftModel` is kept beside it for the merged export (`merge_and_unload`).

The adapters take the model's dtype by default (peft would upcast them to float32 on a half-precision model):
a `bf16-true` fit casts them to bfloat16 anyway, and float32 adapters on a bf16 model cast every adapter input up
and run their small products on CUDA cores (docs/notebook.md, issue #14). `dtype="float32"` keeps peft's float32
adapters; it needs `precision: 32-true` (with `dtype: bfloat16` for a bf16 base), which `check_adapter_dtype` says.
"""

from __future__ import annotations

import torch
from torch import nn

# MeZO's LoRA setting (Malladi et al. 2023, appendix): r 8, alpha 16 on the attention query and value.
DEFAULT_TARGETS = ("q_proj", "v_proj")
ADAPTER_DTYPES = ("model", "float32")


class LoraConfigError(ValueError):
    """LoRA options that cannot apply to this model; the message names the option."""


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    target_modules: list[str] | None = None,
    dropout: float = 0.0,
    dtype: str = "model",
):
    """(the inner model with LoRA layers, the PeftModel around it); `dtype`: the adapters' (`model` or `float32`)."""
    from peft import LoraConfig, get_peft_model

    if dtype not in ADAPTER_DTYPES:
        raise LoraConfigError(f"lora_dtype must be one of {ADAPTER_DTYPES}, got {dtype!r}")
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
    wrapped = get_peft_model(model, config, autocast_adapter_dtype=dtype == "float32")
    return wrapped.get_base_model(), wrapped


def check_adapter_dtype(model: nn.Module, dtype: str) -> None:
    """Refuse a run whose trainer changed the float32 adapters asked for (`bf16-true` casts every parameter)."""
    found = {p.dtype for name, p in model.named_parameters() if ".lora_" in name}
    if dtype == "float32" and found - {torch.float32}:
        raise LoraConfigError(
            f"lora_dtype float32, but the trainer's precision made the adapters {sorted(map(str, found))}: "
            "use trainer.precision 32-true (with model.dtype bfloat16 for a bf16 base model)"
        )
