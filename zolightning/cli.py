"""The `zolightning` command: LightningCLI with ZO-aware defaults.

zolightning fit --config configs/sst2/mezo.yaml --data.data_dir ../shared/data
zolightning validate --config configs/sst2/mezo.yaml        # zero-shot accuracy, no training
zolightning fit --config ... --trainer.devices 2 --trainer.strategy ddp
zolightning compare run GRID.yaml          # a grid of fits with seeds; `compare table` tabulates it
"""

from __future__ import annotations

import logging
import pickle
import sys
import warnings

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from zolightning.bytecode import warn_if_bytecode_uncached
from zolightning.checkpoint_safety import UnsafeCheckpointError, first_line_of, refusal
from zolightning.data import MultiTaskDataModule, TaskDataModule
from zolightning.modules import ZOFineTuneModule
from zolightning.modules.meta_variance import MetaVarianceModule
from zolightning.strategies import ZO_STRATEGY_FOR, refuse_unsupported

log = logging.getLogger("zolightning")

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "zolightning"},
    },
    "check_val_every_n_epoch": None,
}


class ZOLightningCLI(LightningCLI):
    """LightningCLI for ZO fine-tuning: links the tokenizer to the model, swaps in ZO data parallelism."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step:06d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.objective", "data.objective")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        load_checkpoints_weights_only(config)
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

    def before_instantiate_classes(self) -> None:
        if self.subcommand:
            load_checkpoints_weights_only(self.config[self.subcommand])


def load_checkpoints_weights_only(config) -> None:
    """`--ckpt_path` is read with torch's weights-only unpickler unless the user passed `--weights_only false`
    (Lightning reads a local file weights-only by default only through torch's default, and a URL never)."""
    if "weights_only" in config and config.weights_only is None:
        config.weights_only = True


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
        )
    except pickle.UnpicklingError as error:  # a checkpoint outside the weights-only allow-list: one line, no trace
        if not isinstance(error, UnsafeCheckpointError):
            error = refusal("the checkpoint", first_line_of(error), "--weights_only false")
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
