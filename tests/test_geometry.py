"""The second-order model of a ZO step (variance/geometry.py) against a quadratic where every term is known."""

import pytest
import torch

from benchmarks.geometry import GeometrySums, LossProbe, allocation_terms, kind_table, observe_batch
from zolightning.optim import ZOOptimizer

CURVATURE = {
    "a": torch.linspace(0.5, 3.0, 6, dtype=torch.float64),
    "b": torch.linspace(4.0, 9.0, 12, dtype=torch.float64),
}


class Scales:
    def __init__(self, values):
        self.values = values

    def scales(self, params):
        return self.values

    def observe(self, loss_plus, loss_minus):
        pass


def quadratic(batches: int = 40, seed: int = 0):
    """Parameters a (6) and b (3 x 4); batch i's loss 1/2 theta^T H theta + c_i^T theta, H diagonal."""
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=torch.float64)),
    ]
    shift = [torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)]
    offsets = [
        [s + 0.5 * torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in shift] for _ in range(batches)
    ]
    hessian = [CURVATURE["a"], CURVATURE["b"].reshape(3, 4)]

    def loss(i: int) -> torch.Tensor:
        return sum(0.5 * (h * p**2).sum() + (c * p).sum() for h, p, c in zip(hessian, params, offsets[i]))

    def full() -> float:
        with torch.no_grad():
            return float(sum(loss(i) for i in range(batches)) / batches)

    return params, loss, full


def test_second_difference_is_exact_on_a_quadratic():
    params, loss, _ = quadratic()
    probe = LossProbe(params, lambda: loss(0))
    before = [p.detach().clone() for p in params]
    d = [torch.randn(6, dtype=torch.float64), None]
    expected = float((CURVATURE["a"] * d[0] ** 2).sum())
    assert probe.curvature(d, 1e-2, probe.base()) == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # restored exactly


def measured(lr_scales, batches=40, probes=10):
    params, loss, full = quadratic(batches)
    scales = {"iso": torch.ones(2), "skewed": torch.tensor(lr_scales)}
    sums = GeometrySums(kinds=["a", "b"], allocations=scales)
    gen = torch.Generator().manual_seed(1)
    for i in range(batches):
        observe_batch(sums, params, lambda i=i: loss(i), eps=1e-3, probes=probes, generator=gen)
    return params, loss, full, sums


def test_traces_per_kind_and_per_allocation():
    _, _, _, sums = measured([2.0, 0.5])
    table = kind_table(sums, [6, 12])
    assert table["a"]["trace"] == pytest.approx(float(CURVATURE["a"].sum()), rel=0.1)
    assert table["b"]["trace"] == pytest.approx(float(CURVATURE["b"].sum()), rel=0.1)
    terms = allocation_terms(sums)
    skewed = 4 * CURVATURE["a"].sum() + 0.25 * CURVATURE["b"].sum()
    assert terms["skewed"].trace == pytest.approx(float(skewed), rel=0.1)


@pytest.mark.parametrize("allocation", ["iso", "skewed"])
@pytest.mark.parametrize("fraction", [0.5, 1.6])
def test_expected_change_matches_zosgd_steps(allocation, fraction):
    """Mean loss change of real ZOSGD steps from one point = the model's prediction; above lr_max it rises."""
    params, loss, full, sums = measured([2.0, 0.5])
    terms = allocation_terms(sums)[allocation]
    lr = fraction * terms.lr_max
    start = [p.detach().clone() for p in params]
    before, changes = full(), []
    for seed in range(60):
        for i in range(len(sums.allocation_trace[allocation]) // 10):
            optimizer = ZOOptimizer(
                params, lr=lr, eps=1e-3, seed=seed * 1000 + i, block_scales=Scales(sums.allocations[allocation])
            )
            optimizer.step(lambda i=i: loss(i))
            changes.append(full() - before)
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
    mean = sum(changes) / len(changes)
    assert mean == pytest.approx(terms.expected_change(lr), rel=0.15)
    assert (mean < 0) == (fraction < 1)


def test_block_geometry_command_on_the_tiny_model(tmp_path, data_dir, capsys):
    """The benchmark end to end: a learned file, its capped twin and MeZO, every block kind in the tables."""
    from benchmarks.block_geometry import main
    from tests.test_module import _learned_file

    path = _learned_file(tmp_path / "tiny.best.safetensors")
    main(["--model", "tiny-llama", "--data-dir", str(data_dir), "--batches", "2", "--probes", "1", "--files", path])
    out = capsys.readouterr().out
    assert "| MeZO | 1.000 | 1.000 |" in out
    assert "| tiny.best |" in out and "| tiny.best cap 2 |" in out
    for kind in ("embedding", "attn_q", "mlp", "norm"):
        assert f"| {kind} |" in out
