"""Several tasks in one run (multi-task meta-training, or multi-task fine-tuning): one task per step."""

from __future__ import annotations

from typing import Literal

import lightning as L
from torch.utils.data import DataLoader

from zolightning.data.datamodule import TaskDataModule, training_loader
from zolightning.data.facts import DataFacts
from zolightning.data.sampling import MultiTaskStream, StepIndexedStream


class MultiTaskDataModule(L.LightningDataModule):
    """Each training step takes one batch of one task; tasks are visited in turn or in a seeded shuffle.

    Args:
        tasks: task names, e.g. [copa, sst2, boolq].
        tokenizer: model name whose tokenizer to use; the CLI links it to `model.model`.
        data_dir: folder holding `<task>/{train,validation}.jsonl`; when None, the hub is used.
        order: `round_robin` (tasks in the given order) or `shuffled` (a seeded order for every cycle).
        batch_size: training examples per step on each device.
        eval_batch_size: examples per validation/test batch.
        num_train: training examples sampled per task.
        num_eval: at most this many eval examples per task.
        max_length: longest sequence in tokens.
        seed: seed of sampling, training order and task order.
        max_new_tokens: generation tasks: longest answer decoded at evaluation.
    """

    def __init__(
        self,
        tasks: list[str],
        tokenizer: str = "smollm2-135m-instruct",
        data_dir: str | None = None,
        order: Literal["round_robin", "shuffled"] = "round_robin",
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_train: int = 1000,
        num_eval: int = 1000,
        max_length: int = 2048,
        seed: int = 0,
        max_new_tokens: int = 50,
    ):
        super().__init__()
        if len(set(tasks)) != len(tasks) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks}")
        self.order, self.seed, self.batch_size, self.data_dir = order, seed, batch_size, data_dir
        self.members = {
            name: TaskDataModule(
                task=name,
                tokenizer=tokenizer,
                data_dir=data_dir,
                batch_size=batch_size,
                eval_batch_size=eval_batch_size,
                num_train=num_train,
                num_eval=num_eval,
                max_length=max_length,
                seed=seed,
                eval_during_fit=False,
                max_new_tokens=max_new_tokens,
            )
            for name in tasks
        }

    @property
    def max_new_tokens(self) -> int:
        return next(iter(self.members.values())).max_new_tokens

    def setup(self, stage: str | None = None) -> None:
        for member in self.members.values():
            member.setup(stage)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        streams = {}
        for name, member in self.members.items():
            examples, collate_fn = member._train_examples_and_collate()
            streams[name] = StepIndexedStream(
                examples, collate_fn, self.batch_size, self.seed, rank=rank, world_size=world
            )
        stream = MultiTaskStream(
            streams, self.seed, self.order == "shuffled", start_step=trainer.global_step if trainer else 0
        )
        return training_loader(stream)

    def scoring_shapes(self) -> list:
        """Every member's scoring loaders (see `TaskDataModule.scoring_shapes`)."""
        return [shape for member in self.members.values() for shape in member.scoring_shapes()]

    def val_dataloader(self) -> list[DataLoader]:
        return [member._scoring_loader("dev") for member in self.members.values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [member._scoring_loader("eval") for member in self.members.values()]

    def val_split_names(self) -> list[str]:
        return [f"dev:{name}" for name in self.members]

    def test_split_names(self) -> list[str]:
        return [f"test:{name}" for name in self.members]

    def facts(self) -> DataFacts:
        """What the fine-tuning module reads of this data (`data/facts.py`): the members' counts by task."""
        truncated, left_out = {}, {}
        for name, member in self.members.items():
            member_facts = member.facts()
            truncated |= {f"{split}:{name}": n for split, n in member_facts.truncated.items()}
            left_out |= {f"{split}:{name}": n for split, n in member_facts.left_out.items()}
        return DataFacts(self.batch_size, self.max_new_tokens, tuple(self.val_split_names()),
                         tuple(self.test_split_names()), None, truncated, left_out)  # fmt: skip
