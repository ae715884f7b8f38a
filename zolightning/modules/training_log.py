"""What a ZO fit logs after each step, at a cost the step can afford.

A fast ZO step takes a few milliseconds of GPU time, and with `ZOSGD(sync=False)` the host queues it without
waiting. Logging must not undo that: every `LightningModule.log` call costs about a millisecond of host time,
and a host number logged as a metric becomes a tensor copied to the GPU, which waits for all queued work.
So per-step values are summed where they live (on the device, no sync) and logged once per logging interval:
`train/loss` is the mean over the interval (non-finite, skipped steps left out), `zo/projected_grad` the last
step's g; host numbers (lr, timing, memory, skips) are read at logging steps only. Every value is handed to
Lightning as a CPU tensor: Lightning keeps a logged tensor where it lives and turns progress-bar values into
numbers after every batch, so one CUDA value in the progress bar made every later step wait for the GPU
(`benchmarks/sync_probe.py` found it: one synchronisation per step).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch import Tensor

from zolightning.data.facts import facts_of
from zolightning.modules.timing import FitTimer
from zolightning.variance.learned import LearnedVariance, sigma_by_kind

log = logging.getLogger(__name__)


def on_host(metrics: dict[str, Tensor | float]) -> dict[str, Tensor]:
    """The metrics as float32 CPU tensors, with one device-to-host copy for all device values."""
    on_device = [k for k, v in metrics.items() if torch.is_tensor(v) and v.device.type != "cpu"]
    out = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items() if k not in on_device}
    if on_device:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in on_device]).cpu()
        out |= dict(zip(on_device, values.unbind()))
    return out


def _to_logger(module: L.LightningModule, metrics: dict[str, Tensor | float], step: int | None = None) -> None:
    """Straight to the loggers, by default at the step Lightning gives `self.log` values: each `self.log` call
    costs Lightning's result bookkeeping (py-spy: 0.7 ms per step on average for a dozen metrics per interval)."""
    if module.trainer.sanity_checking:
        return
    if step is None:
        step = getattr(module.trainer.fit_loop.epoch_loop, "_batches_that_stepped", module.global_step - 1)
    for logger in module.loggers:  # every configured logger, as self.log would
        logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


class IntervalMean:
    """Mean of the finite values added since the last `pop`, kept on the values' device (or on the host)."""

    def __init__(self):
        self._sum: Tensor | float = 0.0
        self._count: Tensor | float = 0.0

    def add(self, value: Tensor | float) -> None:
        if torch.is_tensor(value):
            finite = torch.isfinite(value)
            self._sum = self._sum + torch.where(finite, value, 0.0)
            self._count = self._count + finite
        elif value == value and abs(value) != float("inf"):
            self._sum, self._count = self._sum + value, self._count + 1

    @property
    def pending(self) -> bool:
        """Whether finite values were added since the last `pop` (reads a device count: not for every step)."""
        return bool(self._count > 0)

    def pop(self) -> Tensor | float:
        mean = self._sum / self._count if torch.is_tensor(self._count) else self._sum / max(self._count, 1)
        if not torch.is_tensor(self._count) and self._count == 0:
            mean = float("nan")
        self._sum, self._count = 0.0, 0.0
        return mean


class TrainingLog:
    """Per-step bookkeeping of `ZOFineTuneModule`: losses, skips, σ, timing and memory."""

    def __init__(self):
        self.timer = FitTimer()
        self.loss = IntervalMean()
        self._last_log_start: float | None = None
        self._skips_reported = 0
        self._handed: tuple[int, dict] | None = None  # (step, metrics) given to self.log, written by Lightning later

    @staticmethod
    def data_counts(module: L.LightningModule) -> None:
        """Examples cut on the left, and left out (answer too long), per split: once, at step 0."""
        facts = facts_of(module.trainer)
        counts = {f"data/truncated_{split}": n for split, n in facts.truncated.items()}
        counts |= {f"data/left_out_{split}": n for split, n in facts.left_out.items()}
        if counts:
            _to_logger(module, counts, step=0)

    def after_step(self, module: L.LightningModule, out, batches: list[dict], start: float) -> None:
        self.loss.add(out.loss)
        first = self.timer.step_done(module.global_step)
        if first is not None:
            seconds = {"perf/first_step_seconds": first, "perf/compile_seconds": self.timer.compile_seconds}
            module.log_dict(on_host(seconds))
            log.info(
                "first step done %.1f s after the fit started (compilation %.1f s)", first, self.timer.compile_seconds
            )
        optimizer = module.optimizers().optimizer
        self._check_skips(module, optimizer, out)
        every = max(module.trainer.log_every_n_steps, 1)
        if module.global_step % every:
            return
        metrics = {"train/loss": self.loss.pop(), "zo/projected_grad": out.projected_grad}
        counts = {"zo/skipped_steps": float(optimizer.num_skipped), "train/forwards": float(optimizer.num_forwards)}
        metrics |= counts | self._perf(module, batches, start, every)
        metrics = on_host(metrics)
        # Through self.log: the progress bar and run health read them. Lightning writes them after the step's
        # hooks, which a stop ends early: kept until then for `flush`.
        self._handed = (module.global_step, {k: metrics[k] for k in ("train/loss", "zo/projected_grad")})
        module.log("train/loss", metrics.pop("train/loss"), prog_bar=True)
        module.log("zo/projected_grad", metrics.pop("zo/projected_grad"))
        _to_logger(module, metrics)
        self._log_sigma(module, optimizer.block_scales)

    def flush(self, module: L.LightningModule) -> None:
        """Log the loss of the steps since the last logging step: a run stopped between two logging steps would
        otherwise leave steps that its checkpoint holds out of its curves."""
        if self.loss.pending:
            _to_logger(module, on_host({"train/loss": self.loss.pop()}))
        elif self._handed is not None and self._handed[0] == module.global_step:  # this step's, not written yet
            _to_logger(module, self._handed[1])

    def _perf(self, module: L.LightningModule, batches: list[dict], start: float, every: int) -> dict:
        # Mean seconds per step since the last logging step: one step's host time says little when steps
        # never wait for the GPU.
        since = self._last_log_start
        seconds = (start - since) / every if since is not None else time.perf_counter() - start
        self._last_log_start = start
        world = module.trainer.world_size
        examples = sum(len(b["input_ids"] if b["kind"] == "generate" else b["gold"]) for b in batches) * world
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) * world  # the batch's tokens, padding excluded
        perf = {"lr": module.optimizers().param_groups[0]["lr"], "perf/step_seconds": seconds}
        perf["perf/examples_per_sec"] = examples / seconds
        perf["perf/tokens_per_sec"] = tokens / seconds
        fast = module._fast_scorer
        if fast is not None:
            perf["perf/recompiles"] = float(fast.trunk.recompiles)
            perf["perf/eager_batches"] = float(fast.trunk.eager_batches)
        graphs = getattr(module.optimizers().optimizer, "step_graphs", None)
        if graphs is not None:
            perf["perf/step_replays"] = float(graphs.replays)
        if module.device.type == "cuda":
            perf["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(module.device) / 2**30
        return perf

    def _check_skips(self, module: L.LightningModule, optimizer, out) -> None:
        if torch.is_tensor(out.skipped):  # steps without host sync: read the device counters when logging
            if module.global_step % max(module.trainer.log_every_n_steps, 1):
                return
            total = optimizer.num_skipped
            if total == self._skips_reported:
                return
            log.warning("%d steps skipped so far (non-finite loss); %d in a row", total, optimizer.consecutive_skipped)
            self._skips_reported = total
        else:
            if not out.skipped:
                return
            log.warning(
                "step %d skipped: non-finite loss or block scale (L+ %s, L- %s); %d in a row",
                module.global_step,
                out.loss_plus,
                out.loss_minus,
                optimizer.consecutive_skipped,
            )

    @staticmethod
    def _log_sigma(module: L.LightningModule, scales: LearnedVariance | None) -> None:
        if scales is None:
            return
        sigma = scales.last_sigma.float()
        metrics = {"zo/norm_factor": scales.last_c}
        for kind, mean in sigma_by_kind(sigma, [b.kind for b in scales.blocks]).items():
            metrics[f"sigma/{kind}"] = mean
        _to_logger(module, on_host(metrics))
        experiment = getattr(module.logger, "experiment", None)
        finite = sigma[torch.isfinite(sigma)].cpu()
        if hasattr(experiment, "add_histogram") and finite.numel():  # TensorBoard refuses an empty histogram
            experiment.add_histogram("sigma/all_blocks", finite, module.global_step)
