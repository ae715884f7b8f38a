import math

import pytest
import torch

from zolightning.optim import ZOOptimizer, step_seed


def _quadratic(dim=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=generator)
    hessian = a @ a.T / dim + torch.eye(dim)
    x = torch.nn.Parameter(torch.randn(dim, generator=generator))
    return x, (lambda: 0.5 * x.detach() @ hessian @ x.detach())


def test_perturb_and_restore_is_exact_to_1e6_in_fp32():
    generator = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(64, 32, generator=generator)), torch.nn.Parameter(torch.randn(32))]
    before = [p.detach().clone() for p in params]
    optimizer = ZOOptimizer(params, lr=0.0, eps=1e-3)
    seed = step_seed(0, 0)
    scales = [1.0, 1.0]
    with torch.no_grad():
        optimizer.engine.perturb(seed, +1.0, scales)
        assert not torch.equal(params[0], before[0])
        optimizer.engine.perturb(seed, -2.0, scales)
        optimizer.engine.perturb(seed, +1.0, scales)
    for p, b in zip(params, before):
        assert ((p - b).norm() / b.norm()).item() < 1e-6


def test_step_with_zero_lr_leaves_weights_within_1e6():
    x, loss = _quadratic()
    before = x.detach().clone()
    ZOOptimizer([x], lr=0.0, eps=1e-3).step(loss)
    assert ((x.detach() - before).norm() / before.norm()).item() < 1e-6


def test_zosgd_lowers_a_quadratic():
    x, loss = _quadratic()
    start = loss().item()
    optimizer = ZOOptimizer([x], lr=0.02, eps=1e-3, seed=3)
    for _ in range(500):
        optimizer.step(loss)
    assert loss().item() < 0.01 * start


def test_update_follows_the_mezo_formula():
    x, loss = _quadratic(dim=5)
    theta = x.detach().clone()
    optimizer = ZOOptimizer([x], lr=0.1, eps=1e-3, seed=11)
    out = optimizer.step(loss)
    z = torch.randn(5, generator=torch.Generator().manual_seed(step_seed(11, 0)))
    expected = theta - 0.1 * out.projected_grad * z
    assert torch.allclose(x.detach(), expected, rtol=0, atol=1e-6)
    assert out.loss == pytest.approx((out.loss_plus + out.loss_minus) / 2)
    assert out.projected_grad == pytest.approx((out.loss_plus - out.loss_minus) / 2e-3)


def test_weight_decay_shrinks_weights_without_signal():
    x = torch.nn.Parameter(torch.ones(10))
    optimizer = ZOOptimizer([x], lr=0.1, eps=1e-3, weight_decay=0.5)
    optimizer.step(lambda: torch.tensor(1.0))  # flat loss: g = 0, only decay acts
    assert torch.allclose(x.detach(), torch.full((10,), 0.95), atol=1e-6)


def test_non_finite_loss_skips_the_update_and_restores_weights():
    x, _ = _quadratic()
    before = x.detach().clone()
    optimizer = ZOOptimizer([x], lr=0.1, eps=1e-3)
    out = optimizer.step(lambda: torch.tensor(math.nan))
    assert out.skipped and optimizer.num_skipped == 1 and optimizer.num_steps == 1
    assert ((x.detach() - before).norm() / before.norm()).item() < 1e-6


def test_state_dict_round_trip_continues_the_same_noise():
    x1, loss1 = _quadratic()
    x2, loss2 = _quadratic()
    a, b = ZOOptimizer([x1], lr=0.01, seed=4), ZOOptimizer([x2], lr=0.01, seed=4)
    for _ in range(3):
        a.step(loss1)
        b.step(loss2)
    c_param, c_loss = _quadratic()
    c_param.data.copy_(x1.detach())
    c = ZOOptimizer([c_param], lr=0.5, seed=99)
    c.load_state_dict(a.state_dict())
    assert c.num_steps == 3 and c.seed == 4 and c.param_groups[0]["lr"] == 0.01
    a.step(loss1)
    c.step(c_loss)
    assert torch.equal(x1.detach(), c_param.detach())


def test_works_with_an_lr_scheduler():
    x, loss = _quadratic()
    optimizer = ZOOptimizer([x], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    optimizer.step(loss)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_bad_arguments_are_refused():
    x, _ = _quadratic()
    with pytest.raises(ValueError, match="eps > 0"):
        ZOOptimizer([x], eps=0.0)
    with pytest.raises(ValueError, match="closure"):
        ZOOptimizer([x]).step(None)


def _two_groups(seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(30, generator=generator))
    b = torch.nn.Parameter(torch.randn(7, 3, generator=generator))
    target = torch.randn(30, generator=generator)
    return [{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lambda: ((a - target) ** 2).sum() + (b**2).sum()


def test_step_on_the_device_takes_the_same_steps_as_the_synchronised_step():
    # g kept on the device (no host sync) vs read on the host: same weights, outputs, skips and counters
    runs = []
    for sync in (True, False):
        groups, loss = _two_groups()
        optimizer = ZOOptimizer(groups, lr=0.01, eps=1e-3, weight_decay=0.1, seed=3, noise="philox", sync=sync)
        outputs = []
        for step in range(6):
            closure = (lambda: torch.tensor(math.inf)) if step in (2, 3) else loss
            outputs.append(optimizer.step(closure))
            if step == 3:
                counters = (optimizer.num_skipped, optimizer.consecutive_skipped)
        runs.append(([p.detach().clone() for g in groups for p in g["params"]], outputs, counters, optimizer))
    (weights_sync, out_sync, counters_sync, opt_sync), (weights_dev, out_dev, counters_dev, opt_dev) = runs
    for a, b in zip(weights_sync, weights_dev):
        assert torch.equal(a, b)
    assert counters_sync == counters_dev == (2, 2)
    assert (opt_dev.num_skipped, opt_dev.consecutive_skipped, opt_dev.num_steps) == (2, 0, 6)
    for a, b in zip(out_sync, out_dev):
        assert torch.is_tensor(b.loss) and bool(b.skipped) == a.skipped
        if not a.skipped:
            assert b.projected_grad.item() == pytest.approx(a.projected_grad, rel=1e-5)
    assert opt_dev.state_dict()["zo"]["num_skipped"] == 2


def test_step_on_the_device_needs_philox_and_fixed_scales():
    x, _ = _quadratic()
    with pytest.raises(ValueError, match="sync=False"):
        ZOOptimizer([x], sync=False)
    with pytest.raises(ValueError, match="sync=False"):
        ZOOptimizer([x], noise="philox", sync=False, block_scales=object())
