"""Which ZO path a run takes (`noise: auto`, `fast_forward: auto`), and the words that say why.

On CUDA with Triton the fast path is the measured one (docs/benchmarks.md): counter-based philox noise through
the fused Triton pass, steps that never wait for the GPU, and the compiled, CUDA-graphed scoring forward.
Elsewhere (CPU) the reference path is faster: the philox reference is PyTorch ops, and compiling a forward
on a CPU costs more than it saves over a short test run.

The noise is part of a run's definition (the same seed with another noise is another run), so a checkpoint
records it as `noise_definition` and a resumed run takes it over (`auto`) or refuses a different one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from zolightning.models.prefix import has_prefix
from zolightning.optim.kernels import fused

log = logging.getLogger(__name__)

NOISE_DEFINITIONS = {"philox": "philox-v1", "generator": "torch-generator"}


@dataclass(frozen=True)
class ZOPath:
    noise: str  # generator | philox
    fast_forward: bool
    why: str

    @property
    def noise_definition(self) -> str:
        return NOISE_DEFINITIONS[self.noise]


def _fused_pass_usable(model: nn.Module) -> bool:
    return fused.usable([p for p in model.parameters() if p.requires_grad])


def _on_cuda(model: nn.Module) -> bool:
    return next(model.parameters()).is_cuda


def _sharded(model: nn.Module) -> bool:
    from zolightning.optim.engine.shards import is_sharded

    return any(is_sharded(p) for p in model.parameters())


def choose_path(model: nn.Module, noise: str, fast_forward: bool | str, recorded_noise: str | None = None,
                streamer=None) -> ZOPath:  # fmt: skip
    """Resolve `auto` settings for the device the model is on; `recorded_noise` is a resumed checkpoint's;
    `streamer`: the weights live in host memory, streamed block by block (`zo_offload`)."""
    reasons = []
    if recorded_noise is not None:
        if noise not in ("auto", recorded_noise):
            raise ValueError(
                f"the checkpoint was trained with noise={recorded_noise!r} ({NOISE_DEFINITIONS[recorded_noise]}); "
                f"this run asks for noise={noise!r}: resuming would change the run's perturbations. Drop "
                f"--model.noise (auto takes the checkpoint's) or start a new run"
            )
        if noise == "auto":
            reasons.append(f"noise={recorded_noise} from the checkpoint")
        noise = recorded_noise
    on_cuda = _on_cuda(model)
    if streamer is not None:
        if noise == "generator":
            raise ValueError("zo_offload needs noise=philox: each block draws z for its own elements")
        if fast_forward is True:
            raise ValueError("fast_forward=true cannot run on streamed weights (zo_offload): use fast_forward=auto")
        noise, fast_forward = "philox", False
        reasons.append("noise=philox, fast_forward=off: weights streamed from host memory (zo_offload)")
    if _sharded(model):
        if noise == "generator":
            raise ValueError("sharded weights (FSDP2) need noise=philox: each rank draws z for its own elements")
        if noise == "auto":
            noise = "philox"
            reasons.append("noise=philox: sharded weights, z indexed by element on every rank")
        if fast_forward == "auto":
            fast_forward = False
            reasons.append("fast_forward=off: sharded weights (FSDP2 all-gathers layer by layer)")
    if noise == "auto":
        fused_ok = _fused_pass_usable(model)
        noise = "philox" if fused_ok else "generator"
        reasons.append(
            "noise=philox: CUDA weights and Triton, one fused pass per perturbation"
            if fused_ok
            else f"noise=generator: {'no Triton fused pass for these weights' if on_cuda else 'weights on the CPU'}"
        )
    if has_prefix(model):
        if fast_forward is True:
            raise ValueError("fast_forward=true cannot run prefix tuning (the compiled trunk takes no prefix cache)")
        if fast_forward == "auto":
            fast_forward = False
            reasons.append("fast_forward=off: prefix tuning (peft's prefix cache, eager forward)")
    if fast_forward == "auto":
        fast_forward = on_cuda
        reasons.append(
            "fast_forward=on: compiled, CUDA-graphed scoring forward" if on_cuda else "fast_forward=off: CPU"
        )
    return ZOPath(noise, bool(fast_forward), "; ".join(reasons) or "as configured")


def describe(path: ZOPath, device: torch.device) -> str:
    forward = "compiled forward" if path.fast_forward else "eager forward"
    return f"ZO path on {device}: noise={path.noise} ({path.noise_definition}), {forward} [{path.why}]"


def step_graph_refusal(module, optimizer) -> str | None:
    """Why whole ZO steps cannot be replayed as CUDA graphs in this fit (`optim/step_graphs.py`); None: they can."""
    scorer = module._fast_scorer
    checks = [
        (module.hparams.get("step_graphs", False), "step_graphs=false"),
        (module.device.type == "cuda", "not on CUDA"),
        (module.trainer.world_size == 1, "more than one process (the losses are all-reduced)"),
        (optimizer.one_pass_update and not optimizer.sync, "only MeZO's zo_sgd step without host sync is captured"),
        (module.hparams.objective in ("loss", "accuracy"), f"objective={module.hparams.objective} decodes"),
        (module.micro_batches_per_step == 1, "accumulate_grad_batches > 1 (a step reads several batches)"),
        (scorer is not None and scorer.trunk.replays and not scorer.trunk.eager_reason, "no planned compiled forward"),
    ]
    return next((why for ok, why in checks if not ok), None)


def warn_half_precision_generator(model: nn.Module, noise: str) -> None:
    """Say so when half-precision weights meet generator noise, whose restore is not exact on their grid."""
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes & {torch.bfloat16, torch.float16} and noise == "generator":
        log.warning(
            "ZO training with %s weights and noise=generator: +eps/-2eps/+eps does not restore half-precision "
            "weights exactly, and the rounding errors swamp the updates; use noise=philox, which recovers "
            "each weight on its dtype grid (bf16 SmolLM2 on SST-2 followed the float32 curve, docs/benchmarks.md).",
            sorted(map(str, dtypes)),
        )
