"""Forward passes counted by every ZO rule: what comparisons at an equal budget hold equal."""

import copy

import pytest
import torch

from tests.zo_factory import make_optimizer
from zolightning.optim import OPTIMIZER_NAMES

PER_STEP = {
    "zo_sgd": 2,
    "zo_sgd_momentum": 2,
    "zo_sgd_nesterov": 2,
    "zo_sgd_sign": 2,
    "zo_adam": 2,
    "hizoo": 3,
    "lozo": 2,
}


def _problem():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 6, generator=generator), torch.randn(12, generator=generator)
    params = [torch.zeros(4, 3), torch.zeros(6)]
    calls = []

    def loss() -> torch.Tensor:
        calls.append(1)
        return 0.5 * ((a[:, :4] @ params[0].sum(1) + a @ params[1] - b) ** 2).sum()

    return params, loss, calls


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("queries", [1, 3])
def test_every_rule_counts_each_closure_call_as_a_forward(name, queries):
    if queries > 1 and name in ("hizoo",):
        pytest.skip("HiZOO takes one direction a step")
    params, loss, calls = _problem()
    optimizer = make_optimizer(name, params, lr=1e-3, seed=1, queries=queries)
    for step in range(4):
        optimizer.step(loss) if step % 2 else optimizer.step(closure=loss)  # positional and keyword closures
    assert optimizer.num_forwards == len(calls) > 0
    if name in PER_STEP:
        assert optimizer.num_forwards == 4 * PER_STEP[name] * (queries if name != "hizoo" else 1)
    else:  # Conserve: 2q, then the loss before and after its step, and once more when it tries the other way
        assert 4 * (2 * queries + 2) <= optimizer.num_forwards <= 4 * (2 * queries + 3)


def test_the_count_resumes_with_the_optimizer_and_older_checkpoints_start_at_zero():
    params, loss, _ = _problem()
    optimizer = make_optimizer("zo_sgd", params, lr=1e-3, seed=1)
    for _ in range(3):
        optimizer.step(loss)
    state = copy.deepcopy(optimizer.state_dict())
    resumed = make_optimizer("zo_sgd", _problem()[0], lr=1e-3)
    resumed.load_state_dict(state)
    assert resumed.num_forwards == 6
    del state["zo"]["num_forwards"]
    resumed.load_state_dict(state)
    assert resumed.num_forwards == 0


def test_a_step_without_a_closure_is_refused_not_counted():
    optimizer = make_optimizer("zo_sgd", _problem()[0], lr=1e-3)
    with pytest.raises(ValueError, match="closure"):
        optimizer.step(None)
    assert optimizer.num_forwards == 0
