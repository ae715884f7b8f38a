"""Seeded split sampling and the step-indexed training stream.

The training stream is a pure function of (seed, global step, rank, world size): batch t on rank r holds
positions [(t * W + r) * B, (t * W + r + 1) * B) of an endless sequence of seeded permutations. So a
resumed run continues at exactly the batch it stopped at, and W ranks with batch B see, together, the
batch that one process with batch W * B sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from torch.utils.data import IterableDataset


@dataclass(frozen=True)
class SplitIndices:
    train: list[int]
    dev: list[int]
    eval: list[int]


def sample_splits(
    num_rows_train: int, num_rows_val: int, num_train: int, num_dev: int, num_eval: int, seed: int
) -> SplitIndices:
    """Dev first, then train, from one seeded shuffle of the train split; eval from the validation split."""
    if num_rows_train <= num_dev:
        raise ValueError(f"the train split has {num_rows_train} rows: not enough for {num_dev} dev examples")
    order = list(range(num_rows_train))
    random.Random(seed).shuffle(order)
    dev = order[:num_dev]
    train = order[num_dev : num_dev + num_train]
    if num_rows_val <= num_eval:
        evaluation = list(range(num_rows_val))
    else:
        evaluation = sorted(random.Random(seed + 1).sample(range(num_rows_val), num_eval))
    return SplitIndices(train, dev, evaluation)


def permutation(size: int, seed: int, cycle: int) -> list[int]:
    order = list(range(size))
    random.Random(f"{seed}:{cycle}").shuffle(order)
    return order


class StepIndexedStream(IterableDataset):
    """Endless collated training batches for one rank, starting at a given global step."""

    def __init__(
        self,
        examples: Sequence,
        collate: Callable[[list], dict],
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not examples:
            raise ValueError("the training split is empty")
        if batch_size * world_size > len(examples):  # a step would repeat examples within its own batch
            raise ValueError(
                f"a step's batch ({batch_size} per device x {world_size} device(s)) is larger than the "
                f"{len(examples)} training examples; lower data.batch_size or raise data.num_train"
            )
        self.examples, self.collate = examples, collate
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def positions(self, step: int) -> range:
        first = (step * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def indices(self, step: int) -> list[int]:
        n = len(self.examples)
        return [self._permutation(p // n)[p % n] for p in self.positions(step)]

    def _permutation(self, cycle: int) -> list[int]:
        # a batch reads one or two cycles' orders; drawing one costs about a millisecond, so keep the last two
        cache = self.__dict__.setdefault("_orders", {})
        if cycle not in cache:
            if len(cache) >= 2:
                cache.pop(min(cache))
            cache[cycle] = permutation(len(self.examples), self.seed, cycle)
        return cache[cycle]

    def batch(self, step: int) -> dict:
        return self.collate([self.examples[i] for i in self.indices(step)])

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def task_schedule(num_tasks: int, step: int, seed: int, shuffled: bool) -> tuple[int, int]:
    """(task index, that task's own step) for global step `step`: every task once per cycle of K steps,
    in order or in a seeded order per cycle."""
    cycle, position = divmod(step, num_tasks)
    order = permutation(num_tasks, seed, cycle) if shuffled else range(num_tasks)
    return order[position], cycle


class MultiTaskStream(IterableDataset):
    """Endless training batches drawn from several tasks' streams, one task per step, tagged with its name."""

    def __init__(self, streams: dict[str, StepIndexedStream], seed: int, shuffled: bool, start_step: int = 0):
        self.streams, self.names = streams, list(streams)
        self.seed, self.shuffled, self.start_step = seed, shuffled, start_step

    def __iter__(self) -> Iterator[dict]:
        step = self.start_step
        while True:
            task, task_step = task_schedule(len(self.names), step, self.seed, self.shuffled)
            yield {**self.streams[self.names[task]].batch(task_step), "task": self.names[task]}
            step += 1
