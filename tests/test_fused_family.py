"""The rules that ran tensor by tensor, now fused (`fused_shaped.py`, multi-query `fused_rules.py`, Conserve's
trial passes), against their tensor-by-tensor path under Triton's interpreter on CPU."""

import textwrap

_INTERPRETED = textwrap.dedent(
    """
    import math
    import torch
    from zolightning.optim import build_zo_optimizer
    from zolightning.optim.kernels import fused
    from tests.zo_factory import make_optimizer

    sizes = [(40, 70), (fused.BLOCK + 5,), (3, 5), (6, 2, 4)]  # a partial block, a vector, a 3-d tensor
    targets = [torch.randn(*s, generator=torch.Generator().manual_seed(1)) for s in sizes]

    def weights(dtype, grid=torch.float32):
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(*s, generator=generator).to(grid).to(dtype) for s in sizes]

    def loss_of(params):
        # float64: the losses of two paths whose weights differ by an ulp differ by little (HiZOO divides by ε²)
        return lambda: sum(((p.double() - t) ** 2).sum() for p, t in zip(params, targets)) / 100

    def pair(name, dtype, steps, lr=1e-3, eps=0.05, sync=True, weight_decay=0.1, grid=torch.float32, **options):
        fused_params, plain_params = weights(dtype, grid), weights(dtype, grid)
        optimizers, outputs = [], []
        for params in (fused_params, plain_params):
            groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}]
            optimizers.append(make_optimizer(
                name, groups, lr=lr, eps=eps, weight_decay=weight_decay, seed=3, noise="philox", sync=sync, **options
            ))
        optimizers[1].engine.use_reference_passes()  # the tensor-by-tensor path of the same rule
        assert optimizers[0].fused and not optimizers[1].fused, name
        for _ in range(steps):
            for optimizer, params in zip(optimizers, (fused_params, plain_params)):
                outputs.append(optimizer.step(loss_of(params)))
        return optimizers, fused_params, plain_params, outputs

    cases = [
        ("lozo", {"lozo_rank": 2, "lozo_interval": 2}),  # V redrawn at steps 0 and 2
        ("lozo", {"lozo_rank": 2, "lozo_interval": 3, "queries": 3}),  # the queries' U summed before one pass
        ("hizoo", {"hessian_smooth": 0.1}),
        ("zo_sgd_conserve", {}),
        ("zo_sgd_conserve", {"queries": 2}),
        ("zo_sgd", {"queries": 3}),
        ("zo_sgd_momentum", {"queries": 2}),
        ("zo_adam", {"queries": 2, "betas": (0.8, 0.9)}),
    ]
    start = weights(torch.float32)
    for name, options in cases:
        # float32, 4 steps: the same weights and states to rounding (eps 0.05: g is not amplified rounding)
        (fast, plain), a, b, _ = pair(name, torch.float32, 4, **options)
        assert max((p - s).abs().max() for p, s in zip(a, start)) > 1e-4, name  # it did move
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)
            for key, value in plain.state[q].items():
                if torch.is_tensor(value):
                    torch.testing.assert_close(fast.state[p][key], value, rtol=1e-4, atol=1e-5, msg=name)
        assert getattr(fast.rule, "last_choice", None) == getattr(plain.rule, "last_choice", None), name
        # bf16, one step, against float32 from the same bf16 weights: θ is recovered after the perturbations,
        # so the update's rounding (1/2 ulp) separates them, and where recovery fails, an ulp of θ + εD
        # (HiZOO's Σ kept at 1: its curvature from bf16 losses is quantisation noise over ε²)
        options = dict(options, hessian_smooth=0.0) if name == "hizoo" else options
        _, a, _, _ = pair(name, torch.bfloat16, 1, lr=1e-4, eps=0.01, **options)
        _, wide, _, _ = pair(name, torch.float32, 1, lr=1e-4, eps=0.01, grid=torch.bfloat16, **options)
        for p, q in zip(a, wide):
            assert ((p.float() - q).abs() <= 2**-7 * q.abs() + 1e-3).all(), name

    # Conserve when both trials lose (lr far too large): back at θ
    (fast, plain), a, b, _ = pair("zo_sgd_conserve", torch.float32, 1, lr=1e3, weight_decay=0.0)
    assert fast.rule.last_choice == plain.rule.last_choice == "stay"
    for p, q, s in zip(a, b, weights(torch.float32)):
        torch.testing.assert_close(p, s, rtol=0, atol=1e-3)
        torch.testing.assert_close(q, s, rtol=0, atol=1e-3)

    (fast, plain), a, b, _ = pair("zo_sgd_conserve", torch.float32, 1, lr=0.5)
    assert fast.rule.last_choice == plain.rule.last_choice, (fast.rule.last_choice, plain.rule.last_choice)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)

    # sync=False: g stays on the device; a non-finite loss restores the weights and keeps HiZOO's Σ
    for name, queries in (("hizoo", {}), ("lozo", {}), ("lozo", {"queries": 2}), ("zo_sgd_momentum", {"queries": 2})):
        params, twin = weights(torch.float32), weights(torch.float32)
        optimizer = make_optimizer(name, params, lr=1e-3, noise="philox", sync=False, **queries)
        assert optimizer.fused and not optimizer.sync, name
        out = optimizer.step(loss_of(params))
        assert torch.is_tensor(out.loss) and not bool(out.skipped), name
        make_optimizer(name, twin, lr=1e-3, noise="philox", sync=True, **queries).step(loss_of(twin))
        for p, q in zip(params, twin):  # g from float32 losses on the device, float64 on the host: 1e-2 steps
            torch.testing.assert_close(p, q, rtol=0, atol=1e-4, msg=name)
        moved = [p.clone() for p in params]
        states = {k: v.clone() for p in params for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
        out = optimizer.step(lambda: torch.tensor(math.nan))
        assert bool(out.skipped) and optimizer.num_skipped == 1 and optimizer.num_steps == 2, name
        assert all((p - m).abs().max() < 1e-6 for p, m in zip(params, moved)), name
        after = {k: v for p in params for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
        assert all(torch.equal(after[k], v) for k, v in states.items()), name
    print("fused family agrees with the reference")
    """
)


def test_fused_family_matches_its_reference_path_under_the_interpreter(run_interpreted):
    run_interpreted(_INTERPRETED, "fused family agrees with the reference")
