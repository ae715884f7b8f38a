"""Meta-validation by downstream runs (issue #34): short ZO fine-tunes with the networks being meta-trained.

A one-step look-ahead gap picks the most aggressive networks (docs/results.md); what a learned-optimizer file is
for is a whole fine-tune. So, from the pretrained weights, on tasks held out of meta-training: `steps` ZO steps
(ZO-SGD with the networks' block scales, the file's use), then the mean loss on held-out rows of each task. The
meta-training module keeps the file whose runs end lowest. Runs use a copy of the model: the meta-training
trajectory and the networks are never touched.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.optim import ZOOptimizer
from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
from zolightning.variance.learned import LearnedVariance

log = logging.getLogger(__name__)


@dataclass
class DownstreamRun:
    task: str
    curve: list[float]  # (L+ + L-) / 2 of every step
    held_out_loss: float  # mean loss on the task's held-out rows after the run (inf if it diverged)


class DownstreamValidation:
    """Short ZO fine-tunes on held-out tasks, the criterion that picks the meta-trained file.

    Args:
        tasks: tasks held out of meta-training (registered names), each fine-tuned from the pretrained weights.
        steps: ZO steps of each run.
        lr: the runs' ZO learning rate (the downstream lr the file is for).
        eps: perturbation scale.
        batch_size: training examples per step.
        num_train: training examples sampled for the runs.
        num_held_out: rows scored after each run (the dev split, sampled from the task's training rows apart from
            those it trains on).
        max_length: longest sequence in tokens.
        seed: data sampling, training order and ZO noise of every run (the same runs at every validation).
        sigma_ceiling: the cap the file will be used with (`ZOFineTuneModule.sigma_ceiling`), or None.
        data_dir: folder of `<task>/{train,validation}.jsonl`; None: the meta-training data's.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        steps: int = 200,
        lr: float = 1e-5,
        eps: float = 1e-3,
        batch_size: int = 16,
        num_train: int = 1000,
        num_held_out: int = 64,
        max_length: int = 2048,
        seed: int = 0,
        sigma_ceiling: float | None = None,
        data_dir: str | None = None,
    ):
        if not tasks or steps < 1 or num_held_out < 1:
            raise ValueError("downstream validation needs at least one task, steps >= 1 and num_held_out >= 1")
        self.tasks, self.steps, self.lr, self.eps = list(tasks), steps, lr, eps
        self.batch_size, self.num_train, self.num_held_out = batch_size, num_train, num_held_out
        self.max_length, self.seed, self.sigma_ceiling, self.data_dir = max_length, seed, sigma_ceiling, data_dir
        self.data: dict[str, TaskDataModule] = {}

    def describe(self) -> dict:
        """The settings, for a file's provenance."""
        keys = ("tasks", "steps", "lr", "eps", "batch_size", "num_held_out", "seed", "sigma_ceiling")
        return {k: getattr(self, k) for k in keys}

    def setup(self, tokenizer: str, data_dir: str | None) -> None:
        for task in self.tasks:
            self.data[task] = TaskDataModule(task, tokenizer=tokenizer, data_dir=self.data_dir or data_dir,
                                             batch_size=self.batch_size, eval_batch_size=self.batch_size,
                                             num_train=self.num_train, num_dev=self.num_held_out, num_eval=1,
                                             max_length=self.max_length, seed=self.seed)  # fmt: skip
            self.data[task].setup()

    def run(self, model: nn.Module, pretrained: Mapping[str, Tensor], nets: nn.Module, normalize: bool):
        """One run per task with these networks; -> [DownstreamRun]."""
        return [self._run(task, model, pretrained, nets, normalize) for task in self.tasks]

    def _trial_model(self, model: nn.Module, pretrained: Mapping[str, Tensor]) -> nn.Module:
        trial = copy.deepcopy(model)  # tied weights stay tied in the copy
        with torch.no_grad():
            for name, p in trainable_named_parameters(trial):
                p.copy_(pretrained[name])
        return trial.eval()

    def _run(self, task: str, model, pretrained, nets, normalize: bool) -> DownstreamRun:
        start = time.perf_counter()
        trial = self._trial_model(model, pretrained)
        params = [p for _, p in trainable_named_parameters(trial)]
        device = params[0].device
        blocks = describe_blocks(trial, self.batch_size)
        variance = LearnedVariance(copy.deepcopy(nets).requires_grad_(False), blocks, normalize,
                                   sigma_ceiling=self.sigma_ceiling)  # fmt: skip
        optimizer = ZOOptimizer(params, lr=self.lr, eps=self.eps, seed=self.seed, block_scales=variance)
        curve = []
        with torch.no_grad():
            for _, batch in zip(range(self.steps), self.data[task].train_dataloader()):
                batch = move_data_to_device(batch, device)
                out = optimizer.step(lambda b=batch: batch_loss(trial, b)[0])
                curve.append((float(out.loss_plus) + float(out.loss_minus)) / 2)
                if not math.isfinite(curve[-1]):
                    break
            held_out = self._held_out_loss(trial, task, device) if math.isfinite(curve[-1]) else math.inf
        log.info("downstream %s: %d steps, held-out loss %.4f (%.1f s)", task, len(curve), held_out,
                 time.perf_counter() - start)  # fmt: skip
        return DownstreamRun(task, curve, held_out)

    def _held_out_loss(self, model: nn.Module, task: str, device: torch.device) -> float:
        """Mean loss over the held-out rows, each batch weighted by its rows."""
        total, rows = 0.0, 0
        for batch in self.data[task].loss_loader("dev"):
            n = int(batch["input_ids"].shape[0])
            total += float(batch_loss(model, move_data_to_device(batch, device))[0]) * n
            rows += n
        return total / rows
