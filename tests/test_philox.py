"""Counter-based noise (philox-v1), the fused pass's arithmetic, and its Triton kernel under the interpreter."""

import textwrap

import pytest
import torch

from zolightning.optim import ZOOptimizer
from zolightning.optim.kernels.perturbation import round_bf16_stochastically, rounding_bits, shift
from zolightning.optim.kernels.philox import philox4x32, philox_normal


def _words(seed, counter):
    result = philox4x32(seed, *(torch.tensor([c], dtype=torch.int64) for c in counter))
    return [int(w) for w in result]


def test_philox_matches_the_random123_known_answers():
    ones = 0xFFFFFFFF
    assert _words(0, (0, 0, 0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _words(ones | ones << 32, (ones,) * 4) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    key = 0xA4093822 | 0x299F31D0 << 32
    counter = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert _words(key, counter) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_noise_is_a_function_of_the_element_index_alone():
    whole = philox_normal(seed=2**40 + 7, key=3, numel=1000)
    pieces = [philox_normal(2**40 + 7, 3, 250, start=s) for s in range(0, 1000, 250)]
    assert torch.equal(torch.cat(pieces), whole)  # any split (shards, launch blocks) gives the same z
    assert not torch.equal(philox_normal(2**40 + 7, 4, 1000), whole)
    assert not torch.equal(philox_normal(2**40 + 8, 3, 1000), whole)


def test_noise_is_standard_normal():
    z = philox_normal(seed=11, key=0, numel=400_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() < 1).float().mean() - 0.6827) < 0.005
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1]) < 0.01


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = torch.full((100_000,), 1.0 + 2**-10)  # a quarter of the way between bf16 neighbours 1 and 1 + 2^-7 (= 1/8 ulp)
    bits = rounding_bits(seed=5, key=0, numel=x.numel(), device=x.device)
    rounded = round_bf16_stochastically(x, bits).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - x[0].item()) < 2e-5
    negative = round_bf16_stochastically(-x, bits).float()
    assert torch.equal(negative, -rounded)


def _quadratic(dtype, noise="philox", **kwargs):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 8).to(dtype))
    return w, ZOOptimizer([w], lr=0.0, eps=1e-3, seed=1, noise=noise, **kwargs)


def test_philox_step_restores_float32_weights():
    w, optimizer = _quadratic(torch.float32)
    before = w.detach().clone()
    optimizer.step(lambda: (w.float() ** 2).sum())
    assert (w.detach() - before).abs().max() < 1e-6


def test_bf16_drift_is_bounded_by_recovering_weights_on_their_grid():
    # lr = 0: a step must leave the weights where they were. Measured after 50 steps over 512 N(0, 1) weights,
    # eps 1e-3: the generator path (+eps, -2 eps, +eps, each rounded) has moved 84.6% of them; the philox path
    # (base recovered on the bf16 grid) 1.8% (weights whose perturbed value crossed a power of two).
    drifted = {}
    for noise in ("generator", "philox"):
        w, optimizer = _quadratic(torch.bfloat16, noise=noise)
        before = w.detach().clone()
        loss = lambda w=w: (w.float() ** 2).sum()  # noqa: E731
        for _ in range(50):
            optimizer.step(loss)
        drifted[noise] = (w.detach() != before).float().mean().item()
    assert drifted["philox"] <= 0.03
    assert drifted["generator"] > 0.5


def test_philox_zo_sgd_decreases_a_quadratic():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32))
    optimizer = ZOOptimizer([w], lr=0.02, eps=1e-3, seed=0, noise="philox")
    start = float((w.detach() ** 2).sum())
    for _ in range(300):
        optimizer.step(lambda: (w**2).sum())
    assert float((w.detach() ** 2).sum()) < 0.5 * start


def test_mismatched_noise_kinds_and_options_are_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        ZOOptimizer([torch.nn.Parameter(torch.zeros(2))], noise="gaussian")
    with pytest.raises(ValueError, match="stochastic_rounding needs noise='philox'"):
        ZOOptimizer([torch.nn.Parameter(torch.zeros(2))], stochastic_rounding=True)
    _, philox = _quadratic(torch.float32)
    _, generator = _quadratic(torch.float32, noise="generator")
    with pytest.raises(ValueError, match="trained with noise='philox'"):
        generator.load_state_dict(philox.state_dict())


def test_reference_shift_applies_the_documented_formula_in_float32():
    p = torch.randn(1000)
    original = p.clone()
    z = philox_normal(9, 0, 1000)
    ones = torch.ones(1)
    shift([p], [0], 9, 0.0 * ones, 0.5 * ones, 0.9 * ones)
    torch.testing.assert_close(p, 0.9 * original + 0.5 * z, rtol=0, atol=1e-6)


_INTERPRETED = textwrap.dedent(
    """
    import torch
    from zolightning.optim.kernels import fused
    from zolightning.optim.kernels.perturbation import rounding_bits, shift_reference
    from zolightning.optim.kernels.philox import philox_normal

    seed, keys = (3 << 32) | 17, [0, 1, 2, 3]
    # sizes around the kernel's block so partial blocks and several programs per tensor are covered
    sizes = [15, fused.BLOCK + 5, 7, 2 * fused.BLOCK + 1]
    zeros = [torch.zeros(n) for n in sizes[:2]] + [torch.zeros(n, dtype=torch.bfloat16) for n in sizes[2:]]
    one = torch.ones(4)
    fused.shift(zeros, keys, seed, 0 * one, one, one)  # writes z itself (rounded for bf16)
    for key, (p, n) in enumerate(zip(zeros, sizes)):
        z = philox_normal(seed, key, n)
        # float32: a few ulp of the transcendental functions; bf16: one ulp (rounding, see below)
        tolerance = 1e-5 + (2**-7 * z.abs() if p.dtype == torch.bfloat16 else 0)
        assert ((p.float() - z).abs() <= tolerance).all(), (key, (p.float() - z).abs().max())

    torch.manual_seed(0)
    params = [torch.randn(n) for n in sizes[:2]] + [torch.randn(n).bfloat16() for n in sizes[2:]]
    copies = [p.clone() for p in params]
    pre, alpha, mult = torch.tensor([0, 1e-3, 0.5, -1e-3]), torch.tensor([1, -2e-3, 0.25, 3e-5]), one * 0.99
    fused.shift(params, keys, seed, pre, alpha, mult, stochastic_rounding=True)
    for key, (p, q, n) in enumerate(zip(params, copies, sizes)):
        z = philox_normal(seed, key, n)
        bits = rounding_bits(seed, key, n, q.device) if q.dtype == torch.bfloat16 else None
        shift_reference(q, z, pre[key].item(), alpha[key].item(), mult[key].item(), bits)
        # bf16: the interpreter converts float32 -> bf16 by truncation, the GPU and PyTorch to nearest: 2 ulp
        ulps = 2 if p.dtype == torch.bfloat16 else 0
        tolerance = 1e-5 + ulps * 2**-7 * q.float().abs()
        assert ((p.float() - q.float()).abs() <= tolerance).all(), (key, (p.float() - q.float()).abs().max())
    # block statistics of the written weights, reported by the pass (sum, sum of squares per tensor)
    statistics = torch.zeros(4, 2, dtype=torch.float64)
    fused.shift(params, keys, seed + 1, pre, alpha, mult, statistics=statistics)
    for i, p in enumerate(params):
        written = p.double()
        expected = torch.stack([written.sum(), (written * written).sum()])
        assert torch.allclose(statistics[i], expected, rtol=1e-5, atol=1e-5), (i, statistics[i], expected)

    # a shard: the rows from element 2 * BLOCK + 8 on of a full tensor get that tensor's z there
    shard = torch.zeros(fused.BLOCK + 3)
    fused.shift([shard], [5], seed, one[:1] * 0, one[:1], one[:1], firsts=[2 * fused.BLOCK + 8])
    full_z = philox_normal(seed, 5, 3 * fused.BLOCK + 11)
    assert ((shard - full_z[2 * fused.BLOCK + 8 :]).abs() <= 1e-5).all()

    # only tensors the kernel can address flat, in a dtype it knows, are offered to it
    assert fused.usable(params)
    assert not fused.usable([torch.zeros(4, 4).t()]) and not fused.usable([torch.zeros(4, dtype=torch.float64)])
    print("kernel agrees with the reference")
    """
)


def test_triton_kernel_matches_the_reference_under_the_interpreter(run_interpreted):
    run_interpreted(_INTERPRETED, "kernel agrees with the reference")


def test_float64_weights_keep_float64_arithmetic():
    p = torch.randn(100, dtype=torch.float64)
    original = p.clone()
    ones = torch.ones(1)
    shift([p], [0], 4, 0 * ones, 1e-3 * ones, ones)
    shift([p], [0], 4, 1e-3 * ones, 0 * ones, ones)  # undo: exact up to float64 rounding, not float32's
    assert (p - original).abs().max() < 1e-12
