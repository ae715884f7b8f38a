"""Which batch shapes the compiled scoring forward is built for: a few (rows, tokens) buckets planned from the data.

A compiled, CUDA-graphed forward is fast only for shapes it has seen; every new shape costs a recompile or a new
graph. So before step 1 the data module describes each scoring loader (the most rows a batch can have and the
widths its batches take), and `plan_shapes` picks a small set of row counts and sequence lengths that every
batch fits into once padded. Lengths are chosen to minimise padded tokens over the batches' widths (a small
dynamic programme), always including the widest batch, so no batch can fall outside the plan.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoaderShapes:
    """What one scoring loader produces: at most `rows` rows a batch, widths drawn from `widths`."""

    name: str
    rows: int
    widths: tuple[int, ...]  # every batch's width (evaluation), or a seeded sample of them (training)


@dataclass(frozen=True)
class ShapePlan:
    """Row counts and lengths (both sorted); every planned shape is one pair of them."""

    rows: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return list(itertools.product(self.rows, self.lengths))

    def bucket(self, rows: int, length: int) -> tuple[int, int] | None:
        """The smallest planned (rows, length) that holds a batch of this shape; None if none does."""
        fit_rows = next((r for r in self.rows if r >= rows), None)
        fit_length = next((n for n in self.lengths if n >= length), None)
        if fit_rows is None or fit_length is None:
            return None
        return fit_rows, fit_length

    def describe(self) -> str:
        return f"rows {list(self.rows)} x tokens {list(self.lengths)} ({len(self.shapes)} shapes)"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def choose_lengths(widths: Sequence[int], multiple: int, max_buckets: int) -> tuple[int, ...]:
    """At most `max_buckets` lengths (multiples of `multiple`, the largest >= max(widths)) that minimise the
    total padded length of `widths`: an exact dynamic programme over the distinct rounded widths."""
    if not widths or multiple < 1 or max_buckets < 1:
        raise ValueError(
            f"need widths, multiple >= 1 and max_buckets >= 1; got {len(widths)}, {multiple}, {max_buckets}"
        )
    counts = Counter(_round_up(w, multiple) for w in widths)
    values = sorted(counts)
    if len(values) <= max_buckets:
        return tuple(values)
    n = len(values)
    count_sum = list(itertools.accumulate((counts[v] for v in values), initial=0))
    width_sum = list(itertools.accumulate((counts[v] * v for v in values), initial=0))

    def cost(i: int, j: int) -> int:  # widths values[i..j] all padded up to values[j]
        return values[j] * (count_sum[j + 1] - count_sum[i]) - (width_sum[j + 1] - width_sum[i])

    inf = float("inf")
    # best[b][j]: least padding covering values[0..j] with b buckets, the last at values[j]
    best = [[inf] * n for _ in range(max_buckets + 1)]
    choice = [[-1] * n for _ in range(max_buckets + 1)]
    for j in range(n):
        best[1][j] = cost(0, j)
    for b in range(2, max_buckets + 1):
        for j in range(n):
            for i in range(j):
                total = best[b - 1][i] + cost(i + 1, j)
                if total < best[b][j]:
                    best[b][j], choice[b][j] = total, i
    buckets, j, b = [], n - 1, max_buckets
    while j >= 0 and b >= 1:
        buckets.append(values[j])
        j, b = choice[b][j], b - 1
    return tuple(sorted(buckets))


def plan_shapes(loaders: Sequence[LoaderShapes], multiple: int = 32, max_lengths: int = 4) -> ShapePlan:
    """One plan for all scoring loaders: their row counts, and lengths chosen over all their batch widths."""
    if not loaders:
        raise ValueError("no scoring loader to plan shapes for")
    widths = [w for loader in loaders for w in loader.widths]
    rows = tuple(sorted({loader.rows for loader in loaders}))
    return ShapePlan(rows, choose_lengths(widths, multiple, max_lengths))


def sampled_batch_widths(
    example_widths: Sequence[int], batch_size: int, samples: int = 256, seed: int = 0
) -> list[int]:
    """Widths of random training batches (the widest example of each), plus the widest possible one."""
    rng = random.Random(seed)
    size = min(batch_size, len(example_widths))
    drawn = [max(rng.sample(list(example_widths), size)) for _ in range(samples)]
    return [*drawn, max(example_widths)]


def sequential_batch_widths(example_widths: Sequence[int], batch_size: int) -> list[int]:
    """Widths of the batches of an unshuffled loader."""
    return [max(example_widths[i : i + batch_size]) for i in range(0, len(example_widths), batch_size)]
