"""One LightningDataModule for every registered task: sample, render, tokenize, collate."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from zolightning.data.encoding import (
    AnswerTooLongError,
    EncodedExample,
    as_lm_example,
    collate,
    collate_generation,
    encode_example,
    scoring_rows,
    through_chat_template,
    with_candidates,
)
from zolightning.data.facts import DataFacts
from zolightning.data.sampling import StepIndexedStream, sample_splits
from zolightning.data.sources import load_split, read_jsonl
from zolightning.data.tasks import get_task
from zolightning.forward.shape_plan import LoaderShapes, sampled_batch_widths, sequential_batch_widths
from zolightning.models import load_tokenizer

log = logging.getLogger(__name__)


def _unbatched(batch):
    return batch


def training_loader(stream) -> DataLoader:
    """The endless training stream, batches pinned on CUDA machines. (A background worker for collation was
    measured slower on an H100: 12.8 vs 8.7 ms per tiny-model step, docs/benchmarks.md.)"""
    return DataLoader(stream, batch_size=None, collate_fn=_unbatched, pin_memory=pin_memory())


def pin_memory() -> bool:
    """Page-locked batches on CUDA machines: a copy from pageable memory waits for all queued GPU work, which
    would make every ZO step wait for the last one."""
    return torch.cuda.is_available()


class TaskDataModule(L.LightningDataModule):
    """Data for one task under the MeZO protocol: 1000 train / 500 dev (from train) / up to 1000 eval.

    Args:
        task: task name (`sst2`, ...).
        tokenizer: model name whose tokenizer to use; the CLI links it to `model.model`.
        data_dir: folder holding `<task>/{train,validation}.jsonl`; when None, the hub is used.
        batch_size: training examples per step on each device.
        eval_batch_size: examples per validation/test batch.
        num_train: training examples sampled from the train split.
        num_dev: dev examples sampled from the train split (None: the task's default, 500 or 100).
        num_eval: at most this many eval examples sampled from the validation split.
        max_length: longest sequence in tokens; longer prompts are cut on the left.
        seed: seed of the split sampling and of the training order.
        eval_during_fit: also score the eval split at every validation (logged as `eval/*`).
        num_workers: DataLoader workers for validation and test batches.
        max_new_tokens: generation tasks (SQuAD, DROP): longest answer decoded at evaluation.
        objective: what a training step optimizes; the CLI links it to `model.objective`: `loss` (the task's
            cross-entropy), `accuracy` (candidate accuracy, not differentiable) or `f1` (generation F1).
        predict_split: what `zolightning predict` answers: the `eval` split (default), `dev` or `train`.
        predict_file: a JSONL file of the task's rows to answer instead (every row, in file order).
    """

    def __init__(
        self,
        task: str = "sst2",
        tokenizer: str = "smollm2-135m-instruct",
        data_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_train: int = 1000,
        num_dev: int | None = None,
        num_eval: int = 1000,
        max_length: int = 2048,
        seed: int = 0,
        eval_during_fit: bool = True,
        num_workers: int = 0,
        max_new_tokens: int = 50,
        objective: Literal["loss", "accuracy", "f1"] = "loss",
        predict_split: Literal["eval", "dev", "train"] = "eval",
        predict_file: str | None = None,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be positive")
        self.task = get_task(task)
        self.tokenizer_name, self.data_dir = tokenizer, data_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_train, self.num_eval, self.max_length = num_train, num_eval, max_length
        self.num_dev = self.task.num_dev if num_dev is None else num_dev
        self.seed, self.eval_during_fit, self.num_workers = seed, eval_during_fit, num_workers
        self.max_new_tokens, self.objective = max_new_tokens, objective
        self.predict_split, self.predict_file = predict_split, predict_file
        if objective == "f1" and not self.task.generation:
            raise ValueError(f"objective=f1 needs a generation task (squad, drop), not {task!r}")
        if objective == "accuracy" and self.task.generation:
            raise ValueError(f"objective=accuracy needs a task with candidates; {task!r} is scored by F1")
        self.splits: dict[str, list[EncodedExample]] = {}
        self.left_out: dict[str, list[int]] = {}  # rows whose answer cannot fit in max_length
        self.truncated: dict[str, int] = {}  # examples whose prompt was cut on the left, per split

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        start = time.perf_counter()
        tokenizer = load_tokenizer(self.tokenizer_name)
        self.pad_id, self.bos_id = tokenizer.pad_token_id, tokenizer.bos_token_id
        train_rows = load_split(self.task, "train", self.data_dir)
        val_rows = load_split(self.task, "validation", self.data_dir)
        picked = sample_splits(len(train_rows), len(val_rows), self.num_train, self.num_dev, self.num_eval, self.seed)
        for name, rows, indices in (
            ("train", train_rows, picked.train),
            ("dev", train_rows, picked.dev),
            ("eval", val_rows, picked.eval),
        ):
            self.splits[name], unfit = self._encode(tokenizer, rows, indices)
            cut = sum(e.truncated for e in self.splits[name])
            log.info(
                "%s %s: %d examples, %d truncated on the left to %d tokens",
                self.task.name,
                name,
                len(self.splits[name]),
                cut,
                self.max_length,
            )
            if unfit:
                log.warning(
                    "%s %s: %d example(s) left out, their answer alone exceeds max_length=%d (rows %s)",
                    self.task.name,
                    name,
                    len(unfit),
                    self.max_length,
                    unfit[:10],
                )
            self.left_out[name] = unfit
        self.truncated = {name: sum(e.truncated for e in split) for name, split in self.splits.items()}
        log.info("%s data ready (%.1f s)", self.task.name, time.perf_counter() - start)

    def _encode(self, tokenizer, rows: list[dict], indices: list[int]) -> tuple[list[EncodedExample], list[int]]:
        encoded, unfit = [], []
        for i in indices:
            try:
                example = self.task.render(rows[i])
                if self.task.chat_template:
                    example = through_chat_template(tokenizer, example)
                encoded.append(encode_example(tokenizer, example, self.max_length, index=i))
            except AnswerTooLongError:
                unfit.append(i)
        return encoded, unfit

    def _generation_collate(self):
        return partial(
            collate_generation,
            pad_id=self.pad_id,
            keep_first=self.bos_id is not None,
            max_prompt_length=self.max_length - self.max_new_tokens,
        )

    def _train_examples_and_collate(self):
        """What one training step sees, by objective: the task's loss, candidate accuracy, or generation F1."""
        examples = self.splits["train"]
        if self.objective == "f1":
            return examples, self._generation_collate()
        if self.objective == "accuracy" or self.task.train_mode == "classification":
            return examples, partial(collate, pad_id=self.pad_id, kind="classification")
        return [as_lm_example(e) for e in examples], partial(collate, pad_id=self.pad_id, kind="lm")

    def train_dataloader(self) -> DataLoader:
        examples, collate_fn = self._train_examples_and_collate()
        trainer = self.trainer
        # the stream counts batches; a step reads `micro_batches_per_step` of them (gradient accumulation)
        per_step = getattr(trainer.lightning_module, "micro_batches_per_step", 1) if trainer else 1
        stream = StepIndexedStream(
            examples,
            collate_fn,
            self.batch_size,
            self.seed,
            start_step=trainer.global_step * per_step if trainer else 0,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        return training_loader(stream)

    def loss_loader(self, split: str) -> DataLoader:
        """`split`'s examples in order, batched as a training step scores them (generation tasks by their answer's
        loss): the loss on held-out rows after a short fine-tune (meta-validation by downstream runs)."""
        kind = self.task.train_mode
        examples = [as_lm_example(e) for e in self.splits[split]] if kind == "lm" else self.splits[split]
        return DataLoader(examples, batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=partial(collate, pad_id=self.pad_id, kind=kind))  # fmt: skip

    def _scoring_loader(self, split: str, answers_as_text: bool = False) -> DataLoader:
        collate_fn = self._generation_collate() if self.task.generation else partial(collate, pad_id=self.pad_id)
        if answers_as_text:
            collate_fn = with_candidates(collate_fn)
        return DataLoader(
            self.splits[split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory(),
        )

    def scoring_shapes(self) -> list[LoaderShapes]:
        """The batch shapes of every loader scored by a forward (generation batches decode instead): what the
        compiled forward is planned for (`shape_plan.py`)."""
        shapes = []
        examples, _ = self._train_examples_and_collate()
        if self.objective != "f1":
            per_example, widths = scoring_rows(examples)
            batch_widths = sampled_batch_widths(widths, self.batch_size, seed=self.seed)
            shapes.append(LoaderShapes("train", self.batch_size * per_example, tuple(batch_widths)))
        if not self.task.generation:
            for split in dict.fromkeys(["dev", "eval"]):  # both can be validated or tested
                per_example, widths = scoring_rows(self.splits[split])
                batch_widths = sequential_batch_widths(widths, self.eval_batch_size)
                shapes.append(LoaderShapes(split, self.eval_batch_size * per_example, tuple(batch_widths)))
        return shapes

    def val_dataloader(self) -> list[DataLoader]:
        return [self._scoring_loader(s) for s in self.val_split_names()]

    def test_dataloader(self) -> DataLoader:
        return self._scoring_loader("eval")

    def predict_dataloader(self) -> DataLoader:
        """The rows `zolightning predict` answers: `predict_file` (all of it) or the `predict_split`."""
        split = self.predict_split
        if self.predict_file is not None:
            rows = read_jsonl(Path(self.predict_file).expanduser(), self.task)
            tokenizer = load_tokenizer(self.tokenizer_name)
            self.splits["predict"], unfit = self._encode(tokenizer, rows, list(range(len(rows))))
            if unfit:
                log.warning("%s: rows %s left out (answer beyond max_length)", self.predict_file, unfit[:10])
            split = "predict"
        return self._scoring_loader(split, answers_as_text=True)

    def test_split_names(self) -> list[str]:
        return ["test"]

    def facts(self) -> DataFacts:
        """What the fine-tuning module reads of this data (`data/facts.py`)."""
        return DataFacts(
            self.batch_size, self.max_new_tokens, tuple(self.val_split_names()), tuple(self.test_split_names()),
            self.task.name, dict(self.truncated), {k: len(v) for k, v in self.left_out.items()},
        )  # fmt: skip

    def val_split_names(self) -> list[str]:
        """What each validation dataloader holds, in order; the module logs under these names."""
        return ["dev", "eval"] if self.eval_during_fit else ["dev"]
