"""The fine-tuning module's ZO optimizer, built from its options, its weights and where they live.

One place decides which optimizer runs a fit: a `StreamedZOOptimizer` when the strategy streams the weights from
host memory (`zo_offload`), else a `ZOOptimizer`; with learned block variance, whether g may stay on the device.
"""

from __future__ import annotations

import logging

import torch

from zolightning.data.facts import facts_of
from zolightning.models.lora import check_adapter_dtype
from zolightning.offload.optimizer import StreamedZOOptimizer, check_offload_options
from zolightning.optim import ZOOptimizer
from zolightning.resources import find_optimizer_file
from zolightning.variance.learned import LearnedVariance, learned_variance_for

log = logging.getLogger(__name__)


def build_optimizer(module) -> ZOOptimizer:
    """The optimizer of a `ZOFineTuneModule` (matrices decayed, vectors not), once its model is on its device."""
    h = module.hparams
    check_adapter_dtype(module.model, h.lora_dtype)  # after the trainer's precision cast
    decay, no_decay = [], []
    for p in module.model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    block_scales = learned_scales(module, decay + no_decay)
    streamed = {} if module.streamer is None else {"streamer": module.streamer}
    if streamed:
        check_offload_options(h)
    # g stays on the device where the noise, the variance, the rule and the weights' place allow it
    sync = module.path.noise != "philox" or block_scales is not None or not module.rule.device_step or bool(streamed)
    optimizer = (StreamedZOOptimizer if streamed else ZOOptimizer)(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        module.rule,
        queries=h.queries,
        lr=h.lr,
        eps=h.eps,
        weight_decay=h.weight_decay,
        seed=h.zo_seed,
        block_scales=block_scales,
        noise=module.path.noise,
        stochastic_rounding=h.stochastic_rounding,
        sync=sync,
        **streamed,
    )
    if not optimizer.sync:
        log.info("ZO steps keep g on the device: a step never waits for the GPU")
    return optimizer


def learned_scales(module, walk: list[torch.Tensor]) -> LearnedVariance | None:
    """Learned block variance for these tensors, or None (isotropic); its networks see the step's whole batch."""
    h = module.hparams
    if h.variance == "isotropic":
        return None
    batch_size = facts_of(module.trainer).batch_size * module.micro_batches_per_step
    file = find_optimizer_file(h.variance_file)  # a shipped file by its checkout path, from any folder
    return learned_variance_for(file, module.model, walk, batch_size, module.trainer.world_size, h.normalize,
                                h.sigma_ceiling)  # fmt: skip
