"""The estimated rules' fused update pass (fused_rules.py) against their tensor-by-tensor path, under Triton's
interpreter on CPU: the same weights and states, a device-side skip, and the fallback where it cannot run."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.zo_factory import make_optimizer
from zolightning.optim import ZOSGDConserve, ZOSGDMomentum

_INTERPRETED = textwrap.dedent(
    """
    import math
    import torch
    from zolightning.optim import ZOAdam, ZOOptimizer, ZOSGDMomentum, ZOSGDNesterov, ZOSGDSign, build_zo_optimizer
    from zolightning.optim.kernels import fused
    from tests.zo_factory import make_optimizer

    sizes = [(40, 70), (fused.BLOCK + 5,), (3, 5)]  # a partial block, several programs per tensor
    targets = [torch.randn(*s, generator=torch.Generator().manual_seed(1)) for s in sizes]

    def weights(dtype):
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(*s, generator=generator).to(dtype) for s in sizes]

    def loss_of(params):
        return lambda: sum(((p.float() - t) ** 2).sum() for p, t in zip(params, targets)) / 100

    def pair(cls, dtype, steps, eps=1e-3, **options):
        fused_params, plain_params = weights(dtype), weights(dtype)
        optimizers = []
        for params in (fused_params, plain_params):
            groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}]
            common = {"lr": 1e-3, "eps": eps, "weight_decay": 0.1, "seed": 3, "noise": "philox"}
            optimizers.append(make_optimizer(cls, groups, **common, **options))
        optimizers[1].engine.use_reference_passes()  # the tensor-by-tensor path of the same rule
        assert optimizers[0].fused and not optimizers[1].fused
        for _ in range(steps):
            for optimizer, params in zip(optimizers, (fused_params, plain_params)):
                optimizer.step(loss_of(params))
        return optimizers, fused_params, plain_params

    rules = [(ZOSGDMomentum, {"momentum": 0.9}), (ZOSGDMomentum, {"momentum": 0.0}), (ZOSGDSign, {}),
             (ZOAdam, {"betas": (0.8, 0.9)}), (ZOSGDNesterov, {"momentum": 0.8})]
    for cls, options in rules:
        # float32: the same weights and states after 4 steps, to float32 rounding (Adam's division, FMAs)
        (fast, plain), a, b = pair(cls, torch.float32, 4, **options)
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)  # a multiply-add fused or not: 1 ulp
            for name, value in plain.state[q].items():
                got = fast.state[p][name]
                assert got == value if not torch.is_tensor(value) else torch.allclose(got, value, atol=1e-5), name
        # bf16, one step: the interpreter rounds float32 -> bf16 by truncation, PyTorch to nearest: 1 ulp
        (fast, plain), a, b = pair(cls, torch.bfloat16, 1, eps=0.05, **options)
        for p, q in zip(a, b):
            assert ((p.float() - q.float()).abs() <= 2**-7 * q.float().abs() + 1e-6).all()
            for name, value in plain.state[q].items():
                assert not torch.is_tensor(value) or torch.allclose(fast.state[p][name], value, atol=1e-6), name

    # mixed dtypes: one launch per dtype, each with its own rows of the per-tensor vectors
    mixed = [weights(torch.float32), weights(torch.float32)]
    for params in mixed:
        params[1].data = params[1].data.bfloat16()
    optimizers = [  # per-group lrs: a launch that read another dtype's rows would step by the wrong lr
        ZOOptimizer([{"params": p[:1]}, {"params": p[1:2], "lr": 0.2}, {"params": p[2:], "momentum": 0.0}],
                    ZOSGDMomentum(momentum=0.5), lr=1e-3, eps=0.05, seed=3, noise="philox")
        for p in mixed
    ]  # fmt: skip
    optimizers[1].engine.use_reference_passes()
    for optimizer, params in zip(optimizers, mixed):  # one step: after it, bf16 rounding (1 ulp) moves g
        optimizer.step(loss_of(params))
    for p, q in zip(*mixed):
        assert ((p.float() - q.float()).abs() <= 2**-7 * q.float().abs() + 1e-6).all()

    # sync=False: a non-finite loss restores the weights and leaves the momentum untouched, on the device
    params = weights(torch.float32)
    before = [p.clone() for p in params]
    optimizer = make_optimizer("zo_sgd_momentum", params, lr=1e-3, noise="philox", sync=False)
    assert optimizer.fused and not optimizer.sync
    out = optimizer.step(loss_of(params))
    assert torch.is_tensor(out.skipped) and not bool(out.skipped)
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in params]
    moved = [p.clone() for p in params]
    out = optimizer.step(lambda: torch.tensor(math.nan))
    assert bool(out.skipped) and optimizer.num_skipped == 1 and optimizer.num_steps == 2
    for p, m, buffer in zip(params, moved, buffers):
        assert (p - m).abs().max() < 1e-6  # the +eps, -2 eps, restore round trip in float32
        assert torch.equal(optimizer.state[p]["momentum_buffer"], buffer)
    assert any((p - b).abs().max() > 1e-6 for p, b in zip(params, before))
    print("fused rules agree with the reference")
    """
)


def test_fused_rules_match_their_reference_path_under_the_interpreter(run_interpreted):
    run_interpreted(_INTERPRETED, "fused rules agree with the reference")


def test_without_the_fused_pass_the_rules_read_g_on_the_host():
    # CPU tensors without the interpreter: the tensor-by-tensor path, even when sync=False was asked for
    params = [torch.randn(8, 4)]
    optimizer = make_optimizer("zo_sgd_momentum", params, lr=1e-3, noise="philox", sync=False)
    assert not optimizer.fused
    out = optimizer.step(lambda: (params[0] ** 2).sum())
    assert isinstance(out.loss, float) and "momentum_buffer" in optimizer.state[params[0]]


def test_rules_without_a_device_step_refuse_sync_false_and_the_registry_keeps_them_synced():
    params = [torch.randn(8, 4)]
    with pytest.raises(ValueError, match="reads g on the host"):
        make_optimizer(ZOSGDConserve, params, lr=1e-3, noise="philox", sync=False)
    assert make_optimizer("zo_adam", params, lr=1e-3, noise="philox", sync=False).sync
    assert not make_optimizer("zo_sgd_sign", params, lr=1e-3, noise="philox", sync=False).sync
    with pytest.raises(ValueError, match="sync=False needs noise='philox'"):
        make_optimizer(ZOSGDMomentum, params, lr=1e-3, sync=False)  # the generator path always reads the losses


_INTERPRETED_SHARDS = textwrap.dedent(
    """
    import torch
    from zolightning.optim.kernels import fused_rules

    whole = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    halves = [whole[:3].clone(), whole[3:].clone()]  # two ranks' rows: the second starts at element 60
    state = [torch.zeros_like(whole)], [[torch.zeros_like(h)] for h in halves]
    one = lambda v: torch.tensor([v])
    for step in range(2):  # momentum: the state carries over
        args = (fused_rules.MOMENTUM, [11 + step, 7], torch.zeros(2, 1), torch.tensor([[0.3], [-0.2]]), one(1e-2),
                one(0.99), torch.tensor([[0.9] + [0.0] * 7]), one(1.0))
        fused_rules.update([whole], [state[0]], *args)
        for half, first, st in zip(halves, (0, 60), state[1]):
            fused_rules.update([half], [st], *args, firsts=[first])
    assert torch.equal(torch.cat(halves), whole)
    assert torch.equal(torch.cat([s[0] for s in state[1]]), state[0][0])
    print("shards done")
    """
)


def test_the_rule_kernel_on_shards_equals_it_on_the_whole_tensor(run_interpreted):
    run_interpreted(_INTERPRETED_SHARDS, "shards done")


_INTERPRETED_COUNTS = textwrap.dedent(
    """
    from benchmarks.launch_counts import QUERY_SETTINGS, measure

    for name, queries in QUERY_SETTINGS:
        counts = measure(name, queries)
        print(name, queries, sorted((k, v) for k, v in counts.items()))
    print("counts done")
    """
)

# Per step, as measured before the engine redesign (docs/runs/launch_counts_cpu.md): a pass or a wait for the GPU
# more is a regression the GPU would show as time.
EXPECTED_COUNTS = {
    ("zo_sgd", 1): {"launch _shift_kernel": 3},
    ("zo_sgd_momentum", 1): {"launch _rule_kernel": 1, "launch _shift_kernel": 2},
    ("zo_sgd_sign", 1): {"launch _rule_kernel": 1, "launch _shift_kernel": 2},
    ("zo_sgd_conserve", 1): {"host read float": 5, "launch _rule_kernel": 3, "launch _shift_kernel": 3},
    ("zo_adam", 1): {"host read float": 2, "launch _rule_kernel": 1, "launch _shift_kernel": 2},
    ("hizoo", 1): {"launch _shaped_kernel": 3},
    ("lozo", 1): {"launch _shaped_kernel": 3, "launch _shift_kernel": 1},
    ("zo_sgd", 4): {"launch _rule_kernel": 1, "launch _shift_kernel": 11},
    ("zo_sgd_momentum", 4): {"launch _rule_kernel": 1, "launch _shift_kernel": 11},
    ("lozo", 4): {"launch _rule_kernel": 1, "launch _shaped_kernel": 13, "launch _shift_kernel": 8},
}


def test_every_rule_launches_and_waits_as_often_as_before_the_redesign(run_interpreted):
    # run_interpreted: skipped without Triton; the script's output is parsed here, so it runs its own process
    from tests.conftest import REPO

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _INTERPRETED_COUNTS], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.splitlines()[:-1]:
        name, queries, counts = line.split(" ", 2)
        assert dict(eval(counts)) == EXPECTED_COUNTS[(name, int(queries))], line  # noqa: S307 - our own output
