"""ZO-SGD with Nesterov momentum, the rule added after the engine redesign (#30) as one file under optim/rules/:
its update against a direct re-implementation, its learning, its resume, and its name in configs."""

import copy

import torch

from zolightning.optim import NoiseSource, ZOOptimizer, ZOSGDMomentum, ZOSGDNesterov, resolve_rule, step_seed


def _quadratic(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(12, 6, generator=generator, dtype=dtype)
    b = torch.randn(12, generator=generator, dtype=dtype)
    params = [torch.zeros(4, dtype=dtype), torch.zeros(2, dtype=dtype)]
    return params, lambda: 0.5 * ((a @ torch.cat(params) - b) ** 2).sum()


def test_nesterov_matches_its_definition():
    mu, lr, eps, wd = 0.8, 0.01, 1e-3, 0.1
    params, loss = _quadratic()
    optimizer = ZOOptimizer(params, ZOSGDNesterov(momentum=mu), lr=lr, eps=eps, weight_decay=wd, seed=7)
    for _ in range(5):
        optimizer.step(loss)
    ref, ref_loss = _quadratic()
    buffers = [None, None]
    with torch.no_grad():
        for t in range(5):
            z = [d.double() for d in NoiseSource().directions(ref, step_seed(7, t))]
            for p, zi in zip(ref, z):
                p.add_(eps * zi)
            plus = float(ref_loss())
            for p, zi in zip(ref, z):
                p.sub_(2 * eps * zi)
            minus = float(ref_loss())
            for p, zi in zip(ref, z):
                p.add_(eps * zi)
            g = (plus - minus) / (2 * eps)
            for i, (p, zi) in enumerate(zip(ref, z)):
                buffers[i] = g * zi if buffers[i] is None else mu * buffers[i] + g * zi
                p.mul_(1 - lr * wd).sub_(lr * (g * zi + mu * buffers[i]))
    for got, want in zip(params, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_nesterov_differs_from_heavy_ball_and_lowers_the_loss():
    (a, loss_a), (b, loss_b) = _quadratic(torch.float32), _quadratic(torch.float32)
    nesterov = ZOOptimizer(a, ZOSGDNesterov(0.9), lr=2e-3, seed=1)
    heavy = ZOOptimizer(b, ZOSGDMomentum(0.9), lr=2e-3, seed=1)
    start = float(loss_a())
    for _ in range(300):
        nesterov.step(loss_a)
        heavy.step(loss_b)
    assert float(loss_a()) < 0.5 * start and not torch.equal(a[0], b[0])


def test_a_resumed_nesterov_run_continues_bitwise():
    params, loss = _quadratic(torch.float32)
    optimizer = ZOOptimizer(params, ZOSGDNesterov(0.9), lr=3e-3, seed=3, queries=2)
    for _ in range(3):
        optimizer.step(loss)
    saved = [p.clone() for p in params], copy.deepcopy(optimizer.state_dict())
    for _ in range(3):
        optimizer.step(loss)
    resumed_params, resumed_loss = _quadratic(torch.float32)
    for p, s in zip(resumed_params, saved[0]):
        p.copy_(s)
    resumed = ZOOptimizer(resumed_params, ZOSGDNesterov(0.9), lr=3e-3, seed=99, queries=2)
    resumed.load_state_dict(saved[1])
    for _ in range(3):
        resumed.step(resumed_loss)
    assert all(torch.equal(x, y) for x, y in zip(params, resumed_params))


def test_configs_name_it_by_short_name_or_class_path():
    assert resolve_rule("zo_sgd_nesterov") == ZOSGDNesterov()
    spec = {"class_path": "zolightning.optim.rules.ZOSGDNesterov", "init_args": {"momentum": 0.5}}
    assert resolve_rule(spec) == ZOSGDNesterov(0.5) and resolve_rule(spec).spec()["init_args"] == {"momentum": 0.5}
