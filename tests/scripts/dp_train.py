"""Train the tiny model for a few ZO steps on N CPU processes (gloo) and save each rank's weights.

    python tests/scripts/dp_train.py OUT_DIR --devices 2 --batch-size 4 --steps 5 [--noise philox]

Run as a script because Lightning's DDP launcher re-executes the command line for each rank.
"""

import argparse
import os
import sys
from pathlib import Path

import lightning as L
import torch

from zolightning.data import TaskDataModule
from zolightning.distributed.strategies import ZO_STRATEGY_FOR
from zolightning.modules import ZOFineTuneModule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="64-true")
    parser.add_argument("--noise", default="generator")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    args = parser.parse_args()
    module = ZOFineTuneModule(model="tiny-llama", lr=2e-3, eps=1e-3, noise=args.noise)
    data = TaskDataModule(
        task="sst2",
        tokenizer="tiny-llama",
        data_dir=args.data_dir,
        num_train=64,
        num_dev=16,
        num_eval=16,
        batch_size=args.batch_size,
    )
    strategy = ZO_STRATEGY_FOR["ddp"] if args.devices > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        max_steps=args.steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "weights": [p.detach() for p in module.model.parameters()],
            "has_ddp_wrapper": type(trainer.strategy.model).__name__ == "DistributedDataParallel",
            "any_grad": any(p.grad is not None for p in module.model.parameters()),
        },
        args.out / f"rank{trainer.global_rank}.pt",
    )
    if args.devices > 1:  # as in sharded_zo.py: gloo's teardown can abort (SIGABRT) after the work is saved
        trainer.strategy.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
