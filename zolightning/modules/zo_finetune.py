"""ZOFineTuneModule: forward-only fine-tuning of a causal LM, orchestrated by Lightning.

The math lives elsewhere: the step in `optim/` (engine and rules), the loss in `scoring.py`, the data in `data/`.
This module wires them: a closure per batch, the optimizer step, logging, validation and test metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.text import SQuAD

from zolightning.callbacks.health import RunHealth
from zolightning.callbacks.predictions import PredictionWriter, candidate_predictions, generated_predictions
from zolightning.callbacks.stopping import GracefulStop
from zolightning.checkpoints.provenance import run_record
from zolightning.data.facts import facts_of
from zolightning.forward.fast_forward import FastScoringModel, compile_for_data
from zolightning.forward.fast_path import (
    ZOPath,
    choose_path,
    describe,
    step_graph_refusal,
    warn_half_precision_generator,
)
from zolightning.forward.generation import greedy_answers, negative_f1, update_squad
from zolightning.forward.scoring import (
    answer_logprobs,
    batch_loss,
    branch_objectives,
    candidate_scores,
    negative_accuracy,
)
from zolightning.models import load_causal_lm, load_tokenizer
from zolightning.models.adapters import adapter_summary, add_adapters, keep_trained_tensors, restore_base_tensors
from zolightning.modules.micro_batches import MicroBatches, mean_objective
from zolightning.modules.optimizer_setup import build_optimizer
from zolightning.modules.training_log import TrainingLog
from zolightning.offload.streamer import BlockStreamer
from zolightning.optim import ZORule, resolve_rule
from zolightning.optim.engine.shards import is_sharded, shard_model

log = logging.getLogger(__name__)

# What each split is logged as: the dev split picks checkpoints, the eval split is reported; a multi-task
# run names its splits "dev:<task>" and logs "val/<task>/acc".
LOG_PREFIX = {"dev": "val", "eval": "eval", "test": "test"}


def log_prefix(split: str) -> str:
    kind, _, task = split.partition(":")
    return f"{LOG_PREFIX[kind]}/{task}" if task else LOG_PREFIX[kind]


class ZOFineTuneModule(L.LightningModule):
    """Fine-tune a causal LM with zeroth-order SGD (MeZO): two forwards per step, no backward.

    Args:
        model: `smollm2-135m-instruct` (packaged GGUF), `tiny-llama` (tests), a `.gguf` path, a local
            directory or a Hugging Face hub id.
        dtype: weight dtype at load time (`float32`, `bfloat16`, `float16`); the trainer's `precision`
            (`32-true`, `bf16-true`) converts it again.
        lr: learning rate eta.
        eps: perturbation scale epsilon.
        weight_decay: decoupled weight decay on matrices (not on biases and norms).
        zo_seed: seed of the perturbation directions; the noise of step t depends on (zo_seed, t) only.
        lr_schedule: `constant`, or `linear` decay to 0 at `trainer.max_steps`.
        init_seed: weight seed of tiny random-init models (ignored for pretrained weights).
        variance: `isotropic` (MeZO: every block perturbed with scale 1) or `learned` (ZO Fine-tuner:
            per-block scales from the networks in `variance_file`).
        variance_file: learned-optimizer file (.safetensors; `zolightning optimizer --help`).
        normalize: with learned variance, rescale so the total perturbation size is that of N(0, I).
        sigma_ceiling: with learned variance, cap each block's sigma at this multiple of the mean sigma (not in
            the paper; `variance/learned.py` says why). None: uncapped.
        max_consecutive_skips: stop the run after this many steps in a row with a non-finite loss or scale.
        objective: what the two ZO evaluations measure: `loss` (cross-entropy), or a non-differentiable
            objective: `accuracy` (minus candidate accuracy) or `f1` (minus greedy-decoding F1, SQuAD/DROP).
            `train/loss` logs the objective's value.
        noise: `auto` (philox where the fused Triton pass runs, i.e. CUDA weights with Triton; generator
            elsewhere; a resumed run keeps its checkpoint's), `generator` (per-tensor torch generator, the
            reference path) or `philox` (counter-based noise, one fused Triton kernel per pass on CUDA; weights
            recovered on their dtype grid before updates). With `philox` and isotropic variance, steps never
            wait for the GPU (`ZOSGD(sync=False)`): losses and skips are read only when logged, and
            `perf/step_seconds` is the time between step starts.
        stochastic_rounding: with `noise: philox`, round bf16 weights stochastically in the update pass
            (on SST-2 it fell behind fp32 while nearest rounding did not: docs/benchmarks.md).
        fast_forward: score batches with the model's trunk compiled (`torch.compile`; CUDA graphs on CUDA),
            every batch padded to one of a few shapes planned from the data and compiled before step 1
            (`fast_forward.py`, `shape_plan.py`). `auto`: on for CUDA, off on the CPU.
        fast_forward_bucket: planned sequence lengths are multiples of this, in tokens.
        fast_forward_lengths: at most this many planned sequence lengths (chosen to minimise padding).
        fast_forward_layers: compile one decoder layer and run every layer through it (`compiled_layers.py`).
        optimizer: the ZO update rule (`zolightning/optim/rules/`), by short name or as an object with its own
            options: `zo_sgd` (MeZO), `zo_sgd_momentum`, `zo_sgd_nesterov`, `zo_sgd_sign`, `zo_sgd_conserve`
            (keeps a step only if it lowers the minibatch loss; 2-3 more forwards), `zo_adam`, `hizoo` (diagonal
            curvature-scaled perturbations, 3 forwards a step; no learned variance) or `lozo` (low-rank U Vᵀ
            perturbations of matrices). Options: `--model.optimizer zolightning.optim.rules.ZOAdam
            --model.optimizer.betas [0.9,0.99]`, or `class_path`/`init_args` in YAML. All rules share the engine:
            the noise, learned variance, q queries, sharding and the skip of non-finite steps.
        queries: directions averaged per step (q > 1: 2q forward passes a step; compare at equal forwards).
        peft: `none` (every weight is trained), `lora` (LoRA adapters through peft; `zolightning export` writes
            the merged model) or `prefix` (prefix tuning through peft, eager forward; export writes the peft
            adapter). ZO perturbs and updates only the adapter tensors (learned variance's blocks are those).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is alpha / r · B A).
        lora_target_modules: names of the linear layers that get adapters (default: q_proj, v_proj, as MeZO).
        lora_dtype: the adapters' dtype: `model` (the weights', as `bf16-true` makes them anyway) or `float32`
            (peft's float32 adapters on a half-precision base: needs `precision: 32-true`; slower in bf16).
        prefix_tokens: prefix tuning's number of virtual tokens per layer.
        accumulate_grad_batches: micro-batches per ZO step: L± are the mean over k micro-batches under the same z,
            the loss of one batch k times larger at the memory of one (`micro_batches.py`). The CLI's
            `--trainer.accumulate_grad_batches k` lands here (Lightning refuses it for manual optimization).
        step_graphs: on the fast path (one CUDA device, zo_sgd), replay each whole ZO step as a CUDA graph per
            planned batch shape (`optim/step_graphs.py`). Off by default: a lone SmolLM2 fit is GPU-bound either
            way, and the graphs' pool raised BoolQ's peak 0.49 -> 1.30 GiB (docs/benchmarks.md); for host-bound fits.
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        dtype: str = "float32",
        lr: float = 3e-5,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        zo_seed: int = 0,
        lr_schedule: Literal["constant", "linear"] = "constant",
        init_seed: int = 0,
        variance: Literal["isotropic", "learned"] = "isotropic",
        variance_file: str | None = None,
        normalize: bool = True,
        sigma_ceiling: float | None = None,
        max_consecutive_skips: int = 20,
        objective: Literal["loss", "accuracy", "f1"] = "loss",
        noise: Literal["auto", "generator", "philox"] = "auto",
        stochastic_rounding: bool = False,
        fast_forward: bool | Literal["auto"] = "auto",
        fast_forward_bucket: int = 32,
        fast_forward_lengths: int = 4,
        fast_forward_layers: bool = True,
        optimizer: ZORule | str = "zo_sgd",
        queries: int = 1,
        peft: Literal["none", "lora", "prefix"] = "none",
        lora_r: int = 8,
        lora_alpha: float = 16,
        lora_target_modules: list[str] | None = None,
        lora_dtype: Literal["model", "float32"] = "model",
        prefix_tokens: int = 20,
        step_graphs: bool = False,
        accumulate_grad_batches: int = 1,
    ):
        super().__init__()
        self.rule = resolve_rule(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        # the rule as plain values (class path and options): what a checkpoint may hold and loads weights-only
        self.save_hyperparameters({**self.hparams, "optimizer": self.rule.spec()})
        self.automatic_optimization = False
        if variance == "learned" and not variance_file:
            raise ValueError("variance=learned needs variance_file (a learned-optimizer .safetensors)")
        base = load_causal_lm(model, dtype=dtype, seed=init_seed)
        self.model, wrapper = add_adapters(
            base, peft, lora_r, lora_alpha, lora_target_modules, prefix_tokens, lora_dtype
        )
        self._peft: tuple = (wrapper,) if wrapper is not None else ()  # outside the module tree: weights saved once
        if wrapper is not None:
            log.info(adapter_summary(self.model))
        self.split_metrics = torch.nn.ModuleDict()  # one set per split, created on first use
        self._tokenizer = None  # loaded on first use: only generation tasks decode text
        self._generated: dict[str, SQuAD] = {}
        self._fast_scorer: FastScoringModel | None = None  # built on first use, once the model is on its device
        self._path: ZOPath | None = None  # resolved once the model is on its device
        self._recorded_noise: str | None = None  # a resumed checkpoint's
        self.training_log = TrainingLog()
        self.provenance: dict = {}  # the loaded checkpoint's record of its run (`provenance.run_record`)
        self.micro_batches = MicroBatches(accumulate_grad_batches)

    def export_pretrained(self, out_dir: str, adapter_only: bool = False) -> None:
        """Write a Hugging Face model directory (weights, config, tokenizer), LoRA merged into the weights; for
        prefix tuning or `adapter_only`, peft's adapter directory. Merging changes this module's model in place:
        export at the end."""
        if adapter_only and not self._peft:
            raise ValueError("--adapter-only needs a LoRA or prefix run (this one trained every weight)")
        if self.hparams.peft == "prefix" or adapter_only:  # peft's adapter of the base, loaded with PeftModel
            self._peft[0].save_pretrained(out_dir)
        else:
            (self._peft[0].merge_and_unload() if self._peft else self.model).save_pretrained(out_dir)
            self._fast_scorer = None  # its CUDA graphs read the replaced modules' weights: build anew if used again
        load_tokenizer(self.hparams.model).save_pretrained(out_dir)

    # ---- which path runs --------------------------------------------------------------------------
    @property
    def path(self) -> ZOPath:
        """The resolved noise and forward (see `fast_path.py`); needs the model on its device."""
        if self._path is None:
            h = self.hparams
            self._path = choose_path(self.model, h.noise, h.fast_forward, self._recorded_noise, self.streamer)
            log.info(describe(self._path, self.device))
        return self._path

    @property
    def streamer(self) -> BlockStreamer | None:
        """The strategy's block streamer when the weights live in host memory (`zo_offload`), else None."""
        return getattr(self._trainer.strategy, "streamer", None) if self._trainer is not None else None

    @property
    def micro_batches_per_step(self) -> int:
        """Training batches one ZO step reads (the data module resumes its stream at step × this)."""
        return self.micro_batches.per_step

    def configure_model(self) -> None:
        """Under `zo_fsdp` (Lightning's ModelParallelStrategy), shard the LM with FSDP2 over the device mesh."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None and not any(is_sharded(p) for p in self.model.parameters()):
            shard_model(self.model, mesh)
            self._path = None  # the path depends on whether the weights are sharded

    def configure_callbacks(self):
        # Lightning lets these replace the trainer's callbacks of the same type: a RunHealth the user configured
        # (--trainer.callbacks+=zolightning.callbacks.health.RunHealth ...) is kept by not returning the default one.
        callbacks = getattr(self._trainer, "callbacks", None) or []
        configured = any(isinstance(c, RunHealth) for c in callbacks)
        writer = [] if any(isinstance(c, PredictionWriter) for c in callbacks) else [PredictionWriter()]
        # Accuracy and F1 are piecewise constant: most perturbations change neither, so g = 0 and a repeated loss
        # are what a healthy run of those objectives sees; only the drift check applies to them.
        health = RunHealth(stall_intervals=3 if self.hparams.objective == "loss" else 0)
        return [GracefulStop()] + ([] if configured else [health]) + writer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["zo_noise"] = self.path.noise
        checkpoint["zo_noise_definition"] = self.path.noise_definition
        checkpoint["zolightning"] = run_record(self, self.trainer)  # an export's model card reads it
        if self._peft and not any(is_sharded(p) for p in self.model.parameters()):
            keep_trained_tensors(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        recorded = checkpoint.get("zo_noise")
        if recorded is None:  # checkpoints of earlier versions: the optimizer's own record
            states = checkpoint.get("optimizer_states") or [{}]
            recorded = states[0].get("zo", {}).get("noise")
        self._recorded_noise, self._path = recorded, None
        self.provenance = checkpoint.get("zolightning", {})
        restore_base_tensors(checkpoint, self)

    # ---- optimization -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = self.trainer.max_steps
        if total is None or total < 1:
            raise ValueError("lr_schedule=linear needs trainer.max_steps")
        schedule = LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        if self.device.type == "cuda":  # perf/peak_mem_gib: the training peak, not set-up's broadcasts
            torch.cuda.reset_peak_memory_stats(self.device)
        warn_half_precision_generator(self.model, self.path.noise)
        self.training_log.data_counts(self)
        optimizer = self.optimizers().optimizer
        refusal = step_graph_refusal(self, optimizer)
        if refusal is None:
            optimizer.capture_steps(pool=self.scorer.trunk.pool)
            log.info("ZO steps replay as CUDA graphs, one per batch shape (captured at its second batch)")
        elif self.path.fast_forward and self.hparams.step_graphs:
            log.warning("step_graphs asked for, but ZO steps queue their kernels one by one: %s", refusal)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        batches = self.micro_batches.add(batch)
        if batches is None:  # the step waits for its other micro-batches
            return
        optimizer = self.optimizers()
        strategy = self.trainer.strategy
        if optimizer.optimizer.step_graphs is not None:  # the closure reads exactly this batch
            batches = [self.scorer.trunk.planned(batches[0])]
            optimizer.optimizer.step_graphs.bind(batches[0])
        objective = self._branch_objectives if self.streamer is not None else self._objective

        def closure() -> torch.Tensor:
            # every rank takes the same step
            return strategy.reduce(mean_objective(objective, batches), reduce_op="mean")

        start = time.perf_counter()
        out = optimizer.step(closure=closure)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.training_log.after_step(self, out, batches, start)

    def on_train_end(self) -> None:
        rate = self.training_log.timer.steady_steps_per_second(self.global_step, self.device)
        if rate is not None:
            seconds = self.training_log.timer.val_seconds_total
            log.info("trained to step %d: %.2f steps/s after the first step (validation excluded: %.1f s)",
                     self.global_step, rate, seconds)  # fmt: skip

    def _objective(self, batch: dict) -> torch.Tensor:
        if self.hparams.objective == "accuracy":
            return negative_accuracy(self.scorer, batch)
        if self.hparams.objective == "f1":
            return negative_f1(self.model, self._get_tokenizer(), batch, self._max_new_tokens())
        return batch_loss(self.scorer, batch)[0]

    def _branch_objectives(self, batch: dict) -> torch.Tensor:
        return branch_objectives(self.scorer, batch, self.hparams.objective)

    @property
    def scorer(self):
        """What scores batches: the model, or its compiled trunk + head when the fast forward is on."""
        if not self.path.fast_forward:
            return self.model
        if self._fast_scorer is None:
            self._fast_scorer = self._build_fast_scorer()
        return self._fast_scorer

    def _build_fast_scorer(self) -> FastScoringModel:
        """Plan the shapes from the data module's loaders and compile them all now, before any step."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        h = self.hparams
        sizes = h.fast_forward_bucket, h.fast_forward_lengths
        scorer, seconds = compile_for_data(self.model, datamodule, *sizes, h.fast_forward_layers)
        self.training_log.timer.compile_seconds = seconds
        return scorer

    def on_fit_start(self) -> None:
        self.training_log.timer.fit_started()
        _ = self.scorer  # compile before the sanity check and step 1, where a signal can still stop it at once

    def on_validation_start(self) -> None:
        _ = self.scorer  # `zolightning validate` / `test` compile here

    on_test_start = on_validation_start

    def _get_tokenizer(self):
        self._tokenizer = self._tokenizer or load_tokenizer(self.hparams.model)
        return self._tokenizer

    def _max_new_tokens(self) -> int:
        return facts_of(self._trainer).max_new_tokens

    # ---- evaluation ---------------------------------------------------------------------------------
    def _split_name(self, dataloader_idx: int, stage: str) -> str:
        facts = facts_of(self._trainer)
        return (facts.val_split_names if stage == "val" else facts.test_split_names)[dataloader_idx]

    def _metrics(self, split: str) -> torch.nn.ModuleDict:
        key = f"{split}_metrics"  # a bare "eval" would shadow Module.eval
        if key not in self.split_metrics:
            metrics = {"loss": MeanMetric(), "acc": MeanMetric(), "squad": SQuAD()}
            self.split_metrics[key] = torch.nn.ModuleDict(metrics).to(self.device)
            self._metrics_in_float32()  # created inside bf16-true's default-dtype context otherwise
        return self.split_metrics[key]

    def _generate(self, batch: dict, metrics: torch.nn.ModuleDict, prefix: str) -> None:
        predictions = greedy_answers(self.model, self._get_tokenizer(), batch, self._max_new_tokens())
        update_squad(metrics["squad"], predictions, batch["references"])
        self._generated[prefix] = metrics["squad"]

    def _log_generation(self) -> None:
        # SQuAD's compute returns a dict, which self.log cannot take as a metric object: log at epoch end.
        for prefix, metric in self._generated.items():
            result = metric.compute()  # percentages, synced across ranks
            self.log(f"{prefix}/f1", result["f1"] / 100)
            self.log(f"{prefix}/em", result["exact_match"] / 100)
            metric.reset()
        self._generated = {}

    def on_validation_epoch_end(self) -> None:
        self._log_generation()
        seconds = self.training_log.timer.validation_ended(self.device)
        if not self.trainer.sanity_checking:
            self.log("perf/val_seconds", seconds)
            log.info("validation at step %d took %.1f s", self.global_step, seconds)

    def on_test_epoch_end(self) -> None:
        self._log_generation()

    def _score(self, batch: dict, split: str) -> None:
        metrics, prefix = self._metrics(split), log_prefix(split)
        if batch["kind"] == "generate":
            return self._generate(batch, metrics, prefix)
        loss, scores = batch_loss(self.scorer, batch)
        correct = (scores.argmax(dim=-1) == batch["gold"]).float()
        metrics["loss"].update(loss, weight=correct.numel())
        metrics["acc"].update(correct)
        for name in ("loss", "acc"):
            # Metrics are created on first use, after Lightning mapped the module's attributes: name them.
            self.log(
                f"{prefix}/{name}",
                metrics[name],
                add_dataloader_idx=False,
                batch_size=correct.numel(),
                prog_bar=prefix == "val" and name == "acc",
                metric_attribute=f"split_metrics.{split}_metrics.{name}",
            )

    def _metrics_in_float32(self) -> None:
        # bf16-true converts the whole module, metric states included: a bf16 running mean rounds
        # 333/500 to 1.0. Counting stays in float32 whatever the weights are.
        for metrics in self.split_metrics.values():
            for metric in metrics.values():
                metric.set_dtype(torch.float32)

    def on_validation_epoch_start(self) -> None:
        self._metrics_in_float32()
        self.training_log.timer.validation_started(self.device)

    def on_test_epoch_start(self) -> None:
        self._metrics_in_float32()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, self._split_name(dataloader_idx, "val"))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, self._split_name(dataloader_idx, "test"))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """One JSON-able line per row: the chosen candidate and the scores, or the generated answer."""
        if batch["kind"] == "generate":
            answers = greedy_answers(self.model, self._get_tokenizer(), batch, self._max_new_tokens())
            return generated_predictions(batch, answers)
        return candidate_predictions(batch, candidate_scores(answer_logprobs(self.scorer, batch), batch))
