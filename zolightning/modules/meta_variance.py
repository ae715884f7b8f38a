"""MetaVarianceModule: meta-train the block-variance networks along a first-order trajectory (method.md §2.4).

Per training step, on one batch: the look-ahead meta step trains the networks (math in
`variance/meta.py`), then one first-order SGD step moves the LM (momentum, gradient clipping, lr decaying
linearly to 0 within each restart window). At every window's start the LM goes back to the pretrained
weights, with fresh momentum. The result is a learned-optimizer file for `ZOFineTuneModule`.

Lightning counts every `optimizer.step()`: each meta step makes two, so `trainer.max_steps` is twice the
number of meta steps.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim.engine.noise import NoiseSource, step_seed
from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
from zolightning.variance.downstream import DownstreamRun, DownstreamValidation
from zolightning.variance.file_format import LearnedOptimizerFile
from zolightning.variance.learned import sigma_by_kind
from zolightning.variance.meta import MetaStepResult, unrolled_meta_step
from zolightning.variance.networks import BlockVarianceNets

log = logging.getLogger(__name__)
NOT_PROVENANCE = ("output", "_instantiator", "downstream", "resume_from")  # paths and objects: said otherwise


def _model_label(model: str) -> str:
    """The base model as written into a learned-optimizer file: a local path by its file name only."""
    return Path(model).name if Path(model).exists() else model


def _loss(model, batch: dict) -> Tensor:
    return batch_loss(model, batch)[0]


class MetaVarianceModule(L.LightningModule):
    """Learn the per-block perturbation networks of ZO Fine-tuner for one base model.

    Args:
        model: the base model (same names as `ZOFineTuneModule.model`).
        lr_mlp: SGD learning rate of the networks.
        lr_update: look-ahead step size: the ZO learning rate the networks will be used with downstream
            (method.md: networks trained for a much smaller step than their use learn little).
        lr_update_range: `[low, high]`: sample the look-ahead step log-uniformly in this range at every meta
            step instead (robustness across the downstream lrs of a sweep); `lr_update` is then unused.
        horizon: K, the ZO steps unrolled per meta step (variance/meta.py): the meta-loss is the mean loss
            after K steps over the task's K most recent batches (fewer until K have been seen, also after a
            resume: the batches are not checkpointed). 1 is the
            published one-step look-ahead, bit for bit; larger K penalises steps that only suit one batch.
        lr_llm: first-order learning rate of the LM at the start of each restart window.
        momentum: first-order SGD momentum.
        grad_clip: gradient-norm clip of the first-order step.
        restart_epochs: R, epochs per restart window (an epoch = one pass over the training examples).
        eps: perturbation scale epsilon.
        normalize: normalise the scales (c) as at use time.
        zo_seed: seed of the perturbation directions.
        output: learned-optimizer file written at the end and every `save_every_n_steps` meta steps.
        save_every_n_steps: how often to write `output` (0: only at the end).
        init_seed: weight seed of tiny random-init models.
        downstream: meta-validation by short ZO fine-tunes on held-out tasks (`variance/downstream.py`) at every
            validation: the file whose runs end at the lowest held-out loss is kept as `*.best`, and every run's
            curve is appended to `<output stem>.downstream.jsonl`. None: the look-ahead gap on dev batches picks.
        resume_from: a file this meta-training wrote (`output`): its networks, meta-step count (seeds, lr draws
            and windows continue) and best downstream loss carry on, so that a run too long for one session
            continues in the next with the file alone. The LM starts again from the pretrained weights, as at
            every window's start (the networks' SGD has no momentum to lose).
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        lr_mlp: float = 0.1,
        lr_update: float = 1e-5,
        lr_update_range: tuple[float, float] | None = None,
        horizon: int = 1,
        lr_llm: float = 0.01,
        momentum: float = 0.8,
        grad_clip: float = 1.0,
        restart_epochs: int = 5,
        eps: float = 1e-3,
        normalize: bool = True,
        zo_seed: int = 0,
        output: str = "optimizers/meta-trained.safetensors",
        save_every_n_steps: int = 500,
        init_seed: int = 0,
        downstream: DownstreamValidation | None = None,
        resume_from: str | None = None,
    ):
        super().__init__()
        if lr_update_range is not None and not 0 < lr_update_range[0] <= lr_update_range[1]:
            raise ValueError(f"lr_update_range must be [low, high] with 0 < low <= high, got {lr_update_range}")
        if horizon < 1:
            raise ValueError(f"horizon must be a number of ZO steps >= 1, got {horizon}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.downstream = downstream  # the object (hparams holds its config under the CLI)
        self.model = load_causal_lm(model, seed=init_seed)
        named = trainable_named_parameters(self.model)
        self.names = [n for n, _ in named]
        self.nets = BlockVarianceNets(len(named), generator=torch.Generator().manual_seed(zo_seed))
        # Restarts go back to these: on the CPU, not a second copy on the GPU.
        self.pretrained = {n: p.detach().cpu().clone() for n, p in named}
        self.history: dict[str, dict[str, Tensor]] = {}  # per task: sigma_prev, losses_prev
        self.recent: dict[str, deque[dict]] = {}  # per task: its last `horizon` training batches
        self.meta_steps = 0
        self.best_val_gap = -math.inf
        self.best_downstream_loss = math.inf
        self._noise = NoiseSource()
        if resume_from is not None:
            self._resume(resume_from)

    def _resume(self, path: str) -> None:
        earlier = LearnedOptimizerFile.load(path)
        earlier.check_matches([(n, tuple(p.shape)) for n, p in trainable_named_parameters(self.model)])
        self.nets = earlier.nets_for(self.names)
        self.meta_steps = int(earlier.provenance.get("meta_steps", 0))
        self.best_downstream_loss = float(earlier.provenance.get("best_downstream_loss", math.inf))
        log.info("meta-training resumes at meta step %d from %s", self.meta_steps, path)

    @property
    def params(self) -> list[Tensor]:
        return [p for _, p in trainable_named_parameters(self.model)]

    def configure_optimizers(self):
        nets = torch.optim.SGD(self.nets.parameters(), lr=self.hparams.lr_mlp)
        lm = torch.optim.SGD(self.params, lr=self.hparams.lr_llm, momentum=self.hparams.momentum)
        return [nets, lm]

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        members = getattr(datamodule, "members", {"": datamodule}).values()
        examples = sum(len(m.splits["train"]) for m in members)
        batch = datamodule.batch_size * self.trainer.world_size
        self.window = self.hparams.restart_epochs * math.ceil(examples / batch)
        self.blocks = describe_blocks(self.model, datamodule.batch_size, self.trainer.world_size)
        if self.meta_steps == 0:  # the networks before any meta step, for what-they-learned plots
            self.save_optimizer(self._sibling("start"))
        if self.downstream is not None:
            self.downstream.setup(self.hparams.model, getattr(datamodule, "data_dir", None))
        self.effective_sizes = torch.tensor(
            [b.effective_size for b in self.blocks], dtype=torch.float64, device=self.device
        )

    def lookahead_lr(self) -> float:
        """This meta step's look-ahead step size: fixed, or drawn from the range by (zo_seed, step)."""
        if self.hparams.lr_update_range is None:
            return self.hparams.lr_update
        low, high = (math.log(v) for v in self.hparams.lr_update_range)
        draw = random.Random(step_seed(self.hparams.zo_seed + 1, self.meta_steps)).random()
        return math.exp(low + draw * (high - low))

    def _fresh_history(self) -> dict[str, Tensor]:
        return {
            "sigma_prev": torch.ones(len(self.names), device=self.device),
            "losses_prev": torch.zeros(2, device=self.device),
        }

    def _history(self, task: str) -> dict[str, Tensor]:
        if task not in self.history:
            self.history[task] = self._fresh_history()
        return self.history[task]

    def restart_if_due(self) -> bool:
        """At a window's start (after the first), the LM returns to the pretrained weights, momentum reset."""
        if self.meta_steps == 0 or self.meta_steps % self.window:
            return False
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                p.copy_(self.pretrained[name])
        self.optimizers()[1].optimizer.state.clear()
        return True

    def _meta_result(self, batches: list[dict], history: dict[str, Tensor], seed: int, lookahead_lr: float,
                     train: bool = True) -> MetaStepResult:  # fmt: skip
        """The unrolled meta step; with `train`, its meta-loss is already backpropagated into the networks."""
        seeds = [step_seed(seed, k) if k else seed for k in range(len(batches))]  # K = 1: today's seed
        return unrolled_meta_step(
            self.model,
            self.names,
            self.params,
            self.nets,
            (history["losses_prev"], history["sigma_prev"]),
            self.effective_sizes,
            _loss,
            batches,
            self.hparams.eps,
            lookahead_lr,
            seeds,
            self._noise,
            self.hparams.normalize,
            self.manual_backward if train else None,
        )

    def _recent_batches(self, task: str, batch: dict) -> list[dict]:
        """The task's last `horizon` batches, oldest first, this one last."""
        recent = self.recent.setdefault(task, deque(maxlen=self.hparams.horizon))
        recent.append(batch)
        return list(recent)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_nets, opt_lm = self.optimizers()
        restarted = self.restart_if_due()
        task = batch.get("task", "default")
        history, batches = self._history(task), self._recent_batches(task, batch)
        lookahead_lr = self.lookahead_lr()
        opt_nets.zero_grad()
        result = self._meta_result(batches, history, step_seed(self.hparams.zo_seed, self.meta_steps), lookahead_lr)
        opt_nets.step()
        first = result.steps[0]  # the step taken from the current weights carries the history
        history["sigma_prev"], history["losses_prev"] = (
            first.sigma,
            torch.tensor([first.loss_plus, first.loss_minus], device=self.device),
        )

        position = self.meta_steps % self.window
        lr = self.hparams.lr_llm * (1.0 - position / self.window)
        for group in opt_lm.param_groups:
            group["lr"] = lr
        opt_lm.zero_grad()
        loss = _loss(self.model, batch)
        self.manual_backward(loss)
        torch.nn.utils.clip_grad_norm_(self.params, self.hparams.grad_clip)
        opt_lm.step()
        opt_lm.zero_grad(set_to_none=True)  # no gradient buffers kept between steps
        self.meta_steps += 1

        self.log_dict(
            {
                "meta/loss": result.meta_loss,
                "meta/zo_loss": result.zo_loss,
                # how much the look-ahead steps lower the loss: near 0 means the networks get little signal
                "meta/gap": result.zo_loss - result.meta_loss,
                "meta/lr_update": lookahead_lr,
                "meta/horizon": float(len(result.steps)),
                "meta/projected_grad": first.projected_grad,
                "meta/norm_factor": first.c,
                "train/loss": loss.detach(),
                "lr/llm": lr,
                "lr/mlp": opt_nets.param_groups[0]["lr"],
                "meta/restarted": float(restarted),
            }
        )
        self.log_dict({f"sigma/{k}": v for k, v in sigma_by_kind(first.sigma, [b.kind for b in self.blocks]).items()})
        every = self.hparams.save_every_n_steps
        if every and self.meta_steps % every == 0:
            self.save_optimizer()

    # ---- meta-validation: the look-ahead gain on held-out examples picks the file -----------------------
    def on_validation_epoch_start(self) -> None:
        self._val_gaps: dict[str, list[float]] = {}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """ZO loss − look-ahead loss on a dev batch with the current networks (no update; fixed directions per
        batch so that validations compare like with like). Generation batches carry no answer to score."""
        if batch.get("kind") == "generate":
            return
        members = list(getattr(self.trainer.datamodule, "members", {"default": None}))
        task = members[dataloader_idx] if dataloader_idx < len(members) else "default"
        seed = step_seed(self.hparams.zo_seed + 2, batch_idx)
        history = self.history.get(task) or self._fresh_history()  # read only: validation records nothing
        result = self._meta_result([batch], history, seed, self.lookahead_lr(), train=False)
        gap = result.zo_loss - result.meta_loss
        self._val_gaps.setdefault(task, []).append(gap)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self._val_gaps:
            by_task = {task: sum(gaps) / len(gaps) for task, gaps in self._val_gaps.items()}
            gap = sum(by_task.values()) / len(by_task)  # tasks weigh the same, whatever their batch counts
            self.log_dict({"meta_val/gap": gap, **{f"meta_val/{t}/gap": v for t, v in by_task.items()}})
            if self.downstream is None and gap > self.best_val_gap:
                self.best_val_gap = gap
                self._keep_best(f"meta_val/gap {gap:.3g}")
        if self.downstream is not None:
            self._validate_downstream()

    def _validate_downstream(self) -> None:
        runs = self.downstream.run(self.model, self.pretrained, self.nets, self.hparams.normalize)
        loss = sum(r.held_out_loss for r in runs) / len(runs)
        self.log_dict({"meta_val/downstream_loss": loss, **{f"meta_val/{r.task}/downstream_loss": r.held_out_loss
                                                             for r in runs}})  # fmt: skip
        self._record_runs(runs)
        if loss < self.best_downstream_loss:
            self.best_downstream_loss = loss
            self._keep_best(f"meta_val/downstream_loss {loss:.4g}")

    def _keep_best(self, why: str) -> None:
        path = self.save_optimizer(self.best_output())
        log.info("%s is the best so far (meta step %d): %s", why, self.meta_steps, path)

    def _record_runs(self, runs: list[DownstreamRun]) -> None:
        if not self.trainer.is_global_zero:
            return
        output = Path(self.hparams.output)
        path = output.with_name(output.stem + ".downstream.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for r in runs:
                f.write(json.dumps({"meta_step": self.meta_steps, "task": r.task, "held_out_loss": r.held_out_loss,
                                    "curve": [round(v, 5) for v in r.curve]}) + "\n")  # fmt: skip

    def best_output(self) -> str:
        return self._sibling("best")

    def _sibling(self, label: str) -> str:
        output = Path(self.hparams.output)
        return str(output.with_name(f"{output.stem}.{label}{output.suffix}"))

    def on_train_end(self) -> None:
        self.save_optimizer()

    def save_optimizer(self, path: str | None = None) -> Path:
        """Write the networks as a learned-optimizer file (rank 0 only)."""
        path = Path(path or self.hparams.output)
        if self.trainer.is_global_zero:
            shapes = [tuple(p.shape) for p in self.params]
            provenance = {
                "meta_trained": True,
                "meta_steps": self.meta_steps,
                "tasks": sorted(self.history),
                **{
                    k: v
                    for k, v in self.hparams.items()
                    if k not in ("output", "_instantiator", "downstream", "resume_from")
                },
                **self._selection(),
            }
            LearnedOptimizerFile(
                self.nets,
                list(self.names),
                shapes,
                [b.effective_size for b in self.blocks],
                _model_label(self.hparams.model),
                provenance,
            ).save(path)
        return path

    def _selection(self) -> dict:
        """How this file was chosen, for its provenance."""
        downstream = self.downstream
        if downstream is None:
            return {"meta_val_gap": self.best_val_gap} if math.isfinite(self.best_val_gap) else {}
        return {"downstream": downstream.describe(), "best_downstream_loss": self.best_downstream_loss}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["meta_state"] = {
            "meta_steps": self.meta_steps,
            "history": {t: {k: v.cpu() for k, v in h.items()} for t, h in self.history.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("meta_state", {})
        self.meta_steps = state.get("meta_steps", 0)
        self.history = state.get("history", {})
