"""Shape planning for the compiled forward: optimal length buckets, and every batch fits a planned shape."""

import itertools
import random

import pytest

from zolightning.forward.shape_plan import ShapePlan, choose_lengths, plan_shapes


def _padding(widths, buckets):
    return sum(min(b for b in buckets if b >= w) - w for w in widths)


@pytest.mark.parametrize("seed", range(5))
def test_chosen_lengths_minimise_padding_like_brute_force(seed):
    rng = random.Random(seed)
    widths = [rng.randint(1, 300) for _ in range(rng.randint(5, 60))]
    chosen = choose_lengths(widths, multiple=16, max_buckets=3)
    values = sorted({-(-w // 16) * 16 for w in widths})
    assert len(chosen) <= 3 and chosen[-1] == values[-1] and all(n % 16 == 0 for n in chosen)
    best = min(
        _padding(widths, (*subset, values[-1]))
        for k in range(0, 3)
        for subset in itertools.combinations(values[:-1], k)
    )
    assert _padding(widths, chosen) == best


def test_few_widths_are_kept_as_they_are():
    assert choose_lengths([5, 40, 33], multiple=32, max_buckets=4) == (32, 64)
    with pytest.raises(ValueError):
        choose_lengths([], multiple=32, max_buckets=4)


def test_bucket_is_the_smallest_planned_shape_that_holds_a_batch():
    plan = ShapePlan(rows=(8, 32), lengths=(32, 64, 128))
    assert plan.bucket(8, 33) == (8, 64)
    assert plan.bucket(20, 128) == (32, 128)
    assert plan.bucket(33, 10) is None and plan.bucket(4, 129) is None
    assert len(plan.shapes) == 6 and "6 shapes" in plan.describe()


@pytest.mark.parametrize(("task", "num_dev"), [("sst2", 16), ("cb", 16), ("copa", 16), ("boolq", 16)])
def test_every_batch_of_every_split_maps_to_a_planned_shape(tiny_data, task, num_dev):
    data = tiny_data(task=task, num_dev=num_dev, num_eval=20, max_length=384, batch_size=4, eval_batch_size=6)
    plan = plan_shapes(data.scoring_shapes(), multiple=32, max_lengths=3)
    assert len(plan.lengths) <= 3
    stream = data.train_dataloader().dataset
    batches = [stream.batch(step) for step in range(40)]
    batches += [b for split in ("dev", "eval") for b in data._scoring_loader(split)]
    for batch in batches:
        assert plan.bucket(*batch["input_ids"].shape) is not None, (batch["input_ids"].shape, plan.describe())
