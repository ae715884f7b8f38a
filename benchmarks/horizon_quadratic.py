"""The one-dimensional quadratic where a K-step meta-objective prefers a smaller step than the one-step one (#34).

    python -m benchmarks.horizon_quadratic [--horizons 1 8]

L(theta; b) = (theta - m_b)^2 / 2 with minima m_b = 1.5, 0.5, 1.5, ..., theta_0 = 0, lr 0.5, one sigma for the block
(networks that answer exp(log_sigma)), no normalisation. One step of size a = lr sigma^2 z^2 lands on m_0 at a = 1,
the one-step objective's minimum (loss 0); after K steps theta_K weighs the m_j by a (1 - a)^(K-1-j), whose spread
shrinks with a. Prints, per log sigma around the one-step optimum, each horizon's meta-loss and its derivative in
log sigma, as `zolightning.variance.meta.unrolled_meta_step` computes them (tests/test_meta.py asserts the shape).
"""

from __future__ import annotations

import argparse
import math

import torch

from zolightning.optim.engine.noise import NoiseSource
from zolightning.variance.meta import unrolled_meta_step


class Quadratic(torch.nn.Module):
    """L(theta; b) = (theta - m_b)^2 / 2 in one dimension: the minimum moves from batch to batch."""

    config = None

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, target):
        return 0.5 * (self.theta - target).square().sum()


class ConstantScale(torch.nn.Module):
    """Networks that answer one sigma, exp(log_sigma), for every block."""

    def __init__(self, log_sigma: float):
        super().__init__()
        self.log_sigma = torch.nn.Parameter(torch.tensor(log_sigma, dtype=torch.float64))

    def forward(self, features):
        return self.log_sigma.exp().expand(features.shape[0])


LR = 0.5


def quadratic_meta(log_sigma: float, horizon: int) -> tuple[float, float]:
    """(meta-loss, its derivative in log sigma) of `horizon` ZO steps over minima 1.5, 0.5, 1.5, ..."""
    model, nets = Quadratic(), ConstantScale(log_sigma)
    batches = [{"target": torch.tensor(1 + 0.5 * (-1) ** j, dtype=torch.float64)} for j in range(horizon)]
    result = unrolled_meta_step(model, ["theta"], [model.theta], nets, (torch.zeros(2), torch.ones(1)),
                                torch.ones(1, dtype=torch.float64), lambda m, b: m(b["target"]), batches, eps=1e-3,
                                lr_update=LR, seeds=range(horizon), noise=NoiseSource(), normalize=False)  # fmt: skip
    return result.meta_loss, nets.log_sigma.grad.item()


def one_step_optimum() -> float:
    """log sigma at which the first step has a = lr sigma^2 z_0^2 = 1."""
    z0 = next(iter(NoiseSource().directions([torch.zeros(1, dtype=torch.float64)], 0))).item()
    return math.log(1 / (LR * z0 * z0)) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    best = one_step_optimum()
    print(f"one-step optimum: log sigma = {best:.3f}")
    print("| log sigma | " + " | ".join(f"K = {k}: meta-loss, d/dlog sigma" for k in args.horizons) + " |")
    for log_sigma in [best, *(best + d / 10 for d in range(-30, 11))]:
        cells = [quadratic_meta(log_sigma, k) for k in args.horizons]
        print(f"| {log_sigma:.3f} | " + " | ".join(f"{loss:.4f}, {grad:+.3f}" for loss, grad in cells) + " |")


if __name__ == "__main__":
    main()
