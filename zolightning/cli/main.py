"""The `zolightning` command: LightningCLI with ZO-aware defaults.

zolightning fit --config configs/sst2/mezo.yaml --data.data_dir ../shared/data
zolightning validate --config configs/sst2/mezo.yaml        # zero-shot accuracy, no training
zolightning fit --config ... --trainer.devices 2 --trainer.strategy ddp
zolightning compare run GRID.yaml          # a grid of fits with seeds; `compare table` tabulates it
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zolightning.callbacks.health import UnhealthyRun
from zolightning.checkpoints.safety import (
    UnsafeCheckpointError,
    check_checkpoint_path,
    first_line_of,
    newest_last_checkpoint,
    refusal,
)
from zolightning.cli.bytecode import warn_if_bytecode_uncached
from zolightning.data import MultiTaskDataModule, TaskDataModule
from zolightning.distributed.strategies import ZO_STRATEGY_FOR, refuse_unsupported
from zolightning.modules import ZOFineTuneModule
from zolightning.modules.meta_variance import MetaVarianceModule
from zolightning.resources import find_config

log = logging.getLogger("zolightning")

# What a user's input can be refused with: printed as one line, not a traceback (ModelNotFoundError and the
# sharded-checkpoint refusals are FileNotFoundError; UntrustedPickleError a PermissionError).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, pickle.UnpicklingError)

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "zolightning"},
    },
    "check_val_every_n_epoch": None,
}


class OneLineErrorParser(LightningArgumentParser):
    """A bad option or value is one line (`error: <why>`), not the usage of every option before it."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # parsing that catches its own errors
            return super().error(message, ex)
        print(f"error: {' '.join(message.split())}  (--help lists every option)", file=sys.stderr)
        raise SystemExit(2)


class ZOLightningCLI(LightningCLI):
    """LightningCLI for ZO fine-tuning: links the tokenizer to the model, swaps in ZO data parallelism."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": checkpoint_filename("val/acc"),
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.objective", "data.objective")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        place_logs_under_the_root_dir(self.config)
        prepare_checkpoint_loading(self.config)  # before LightningCLI reads the checkpoint's hyper-parameters

    def before_fit(self) -> None:
        if self.trainer.is_global_zero and self.trainer.log_dir:
            log.info("run folder: %s (tensorboard --logdir %s)", self.trainer.log_dir, self.trainer.log_dir)

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or callback is None:
            return
        best = callback.best_model_path or callback.last_model_path
        if best:
            score = f" ({callback.monitor} {float(callback.best_model_score):.4f})" if callback.best_model_path else ""
            log.info("best checkpoint: %s%s; as a Hugging Face model: zolightning export %s OUT_DIR", best, score, best)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        follow_the_task_metric(config)
        count_steps_in_the_progress_bar(config.trainer)
        move_accumulation_to_the_module(config)
        strategy = config.trainer.strategy
        if isinstance(strategy, str):
            refuse_unsupported(strategy)
        if isinstance(strategy, str) and strategy in ZO_STRATEGY_FOR:
            # DDP's wrapper would allocate gradient buckets (a model-sized copy) that ZO never uses.
            config.trainer.strategy = ZO_STRATEGY_FOR[strategy]
            log.info("strategy %r -> %r (data parallel without gradient buckets)", strategy, config.trainer.strategy)


class MetaCLI(LightningCLI):
    """`zolightning meta ...`: MetaVarianceModule on one or several tasks (MultiTaskDataModule)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        prepare_checkpoint_loading(self.config)


TASK_METRICS = ("val/acc", "val/f1")  # what a task is scored by: candidate accuracy, or F1 of generated answers


def checkpoint_filename(monitor: str) -> str:
    return f"step{{step:06d}}-{monitor.split('/')[-1]}{{{monitor}:.4f}}"


def follow_the_task_metric(config) -> None:
    """The best checkpoint is chosen by the task's own metric (F1 for a generation task, else accuracy) and named
    after it, unless the user monitors something else; decided here, before the data is even read."""
    checkpoint, task = config.get("checkpoint"), config.get("data", {}).get("task")
    if checkpoint is None or not isinstance(task, str) or checkpoint.monitor not in TASK_METRICS:
        return
    from zolightning.data import get_task

    metric = "val/f1" if get_task(task).generation else "val/acc"
    if checkpoint.filename in {checkpoint_filename(m) for m in TASK_METRICS}:
        checkpoint.filename = checkpoint_filename(metric)
    if checkpoint.monitor != metric:
        log.info("checkpoint.monitor %s -> %s: task %s is scored by %s", checkpoint.monitor, metric, task, metric)
        checkpoint.monitor = metric


def move_accumulation_to_the_module(config) -> None:
    """`--trainer.accumulate_grad_batches k`: Lightning accumulates only for gradients it computes, and refuses the
    flag under manual optimization; a ZO step accumulates itself (`model.accumulate_grad_batches`)."""
    k = config.get("trainer", {}).get("accumulate_grad_batches")
    if k in (None, 1) or "accumulate_grad_batches" not in config.get("model", {}):
        return
    if config.model.accumulate_grad_batches not in (1, k):
        raise ValueError(f"trainer.accumulate_grad_batches={k} and model.accumulate_grad_batches="
                         f"{config.model.accumulate_grad_batches} disagree: set one")  # fmt: skip
    config.model.accumulate_grad_batches, config.trainer.accumulate_grad_batches = k, 1
    log.info("accumulate_grad_batches=%d: each ZO step averages L+ and L- over %d micro-batches, same z", k, k)


def with_packaged_configs(argv: list[str]) -> list[str]:
    """`--config NAME` (or `-c`, `--config=NAME`) naming a shipped config (`sst2/mezo`) becomes its path."""
    out, take = [], False
    for arg in argv:
        if take:
            arg, take = str(find_config(arg)), False
        elif arg in ("--config", "-c"):
            take = True
        elif arg.startswith("--config="):
            arg = "--config=" + str(find_config(arg.split("=", 1)[1]))
        out.append(arg)
    return out


def count_steps_in_the_progress_bar(trainer) -> None:
    """The fit's bar shows `step N/max_steps` (`callbacks/progress.py`) unless the bar is off or one is configured."""
    callbacks = trainer.get("callbacks") or []
    if trainer.get("enable_progress_bar") is False or any("ProgressBar" in _class_name(c) for c in callbacks):
        return
    bar = Namespace(class_path="zolightning.callbacks.progress.StepProgressBar", init_args=Namespace())
    trainer.callbacks = [*callbacks, bar]


def _class_name(callback) -> str:
    return str(callback.get("class_path")) if isinstance(callback, Namespace) else type(callback).__name__


def place_logs_under_the_root_dir(root) -> None:
    """`--trainer.default_root_dir DIR` moves a relative logger `save_dir` (the configs' `logs`) under DIR: Lightning
    itself uses the root only when no logger is configured, and every shipped config names one."""
    if not root.get("subcommand"):
        return
    config = root[root.subcommand]
    base, logger = config.get("trainer", {}).get("default_root_dir"), _logger_init_args(config)
    if base and logger is not None and logger.get("save_dir") and not os.path.isabs(logger.save_dir):
        logger.save_dir = os.path.join(base, logger.save_dir)


def prepare_checkpoint_loading(root) -> None:
    """`--ckpt_path`: `last` found among the run's versions (and the logs continued there), a missing, empty or
    truncated file refused with one line, and the file read with torch's weights-only unpickler unless the user
    passed `--weights_only false` (Lightning reads a local file weights-only only through torch's default, and a
    URL never)."""
    if not root.get("subcommand"):
        return
    config = root[root.subcommand]
    if "weights_only" in config and config.weights_only is None:
        config.weights_only = True
    path = config.get("ckpt_path")
    if path == "last":
        logger = _logger_init_args(config)
        if logger is None:
            raise ValueError("--ckpt_path last needs the run's TensorBoard logger (save_dir, name) to find it")
        found = newest_last_checkpoint(Path(logger.save_dir) / (logger.name or ""))
        config.ckpt_path = path = str(found)
        if logger.get("version") is None:  # the resumed run logs on in the folder it resumes
            logger.version = found.parent.parent.name
        log.info("--ckpt_path last: resuming %s", found)
    if path is not None and "://" not in str(path) and path not in ("best", "hpc", "registry"):
        check_checkpoint_path(path)


def _logger_init_args(config):
    logger = config.get("trainer", {}).get("logger")
    if not logger or isinstance(logger, (bool, list)) or "TensorBoardLogger" not in str(logger.get("class_path")):
        return None
    return logger.init_args


def _report(error: BaseException, code: int) -> None:
    """A user-facing error as one line (`ZOLIGHTNING_TRACEBACK=1`: the whole traceback), then exit `code`."""
    if os.environ.get("ZOLIGHTNING_TRACEBACK"):
        raise error
    if isinstance(error, pickle.UnpicklingError) and not isinstance(error, UnsafeCheckpointError):
        error = refusal("the checkpoint", first_line_of(error), "--weights_only false")
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}  (ZOLIGHTNING_TRACEBACK=1 for the traceback)", file=sys.stderr)
    raise SystemExit(code) from None


def _quiet_known_warnings() -> None:
    # The LM is kept in eval mode on purpose (dropout off for both ZO forwards).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def main(args: list[str] | None = None) -> None:
    """`zolightning fit|validate|test|predict` and `zolightning meta ...`; `entry.py` dispatches the rest."""
    argv = sys.argv[1:] if args is None else args
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    _quiet_known_warnings()
    warn_if_bytecode_uncached()
    meta = argv[:1] == ["meta"]
    try:
        argv = with_packaged_configs(argv)
    except FileNotFoundError as error:
        _report(error, 2)
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself when given no args (and warns when given both)
    else:
        args = argv
    cli, module, datamodule = (
        (MetaCLI, MetaVarianceModule, MultiTaskDataModule)
        if meta
        else (ZOLightningCLI, ZOFineTuneModule, TaskDataModule)
    )
    try:
        cli(
            module,
            datamodule,
            trainer_defaults=TRAINER_DEFAULTS,
            args=argv[1:] if meta else args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
        )
    except UnhealthyRun as error:  # the run stalled or diverged: checkpoints so far are kept
        _report(error, 1)
    except USER_ERRORS as error:  # bad input (data, config, checkpoint, hyper-parameters): nothing ran
        _report(error, 2)


if __name__ == "__main__":
    main()
