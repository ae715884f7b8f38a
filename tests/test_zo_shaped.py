"""HiZOO and LOZO: their updates against direct re-implementations, resume, learning, refusals."""

import copy
import math

import pytest
import torch

from tests.zo_factory import make_optimizer
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import LOZO, HiZOO, step_seed
from zolightning.optim.rules.lozo import LAZY_TAG


def _problem(dtype=torch.float64):
    """A least-squares loss over a 3×2 matrix and a 2-vector (LOZO treats them differently)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(14, 8, generator=generator, dtype=dtype)
    b = torch.randn(14, generator=generator, dtype=dtype)
    params = [torch.zeros(3, 2, dtype=dtype), torch.zeros(2, dtype=dtype)]

    def loss() -> torch.Tensor:
        return 0.5 * ((a @ torch.cat([p.flatten() for p in params]) - b) ** 2).sum()

    return params, loss


def _normal(seed: int, index: int, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step_seed(seed, index))
    return torch.randn(shape, generator=generator, dtype=torch.float32).double()


def _loss_at(params, directions, shift, loss) -> float:
    saved = [p.clone() for p in params]
    for p, d in zip(params, directions):
        p.add_(shift * d)
    value = float(loss())
    for p, s in zip(params, saved):
        p.copy_(s)
    return value


def _reference_lozo(steps, lr, eps, wd, rank, interval):
    params, loss = _problem()
    for t in range(steps):
        seed = step_seed(7, t)
        v_seed = step_seed(7 ^ LAZY_TAG, t // interval)
        directions = []
        for i, p in enumerate(params):
            if p.dim() < 2:
                directions.append(_normal(seed, i, p.shape))
            else:
                u, v = _normal(seed, i, (p.shape[0], rank)), _normal(v_seed, i, (p.numel() // p.shape[0], rank))
                directions.append((u @ v.T).view(p.shape))
        g = (_loss_at(params, directions, eps, loss) - _loss_at(params, directions, -eps, loss)) / (2 * eps)
        for p, d in zip(params, directions):
            p.mul_(1 - lr * wd).sub_(lr * g * d)
    return params


def _reference_hizoo(steps, lr, eps, alpha):
    params, loss = _problem()
    sigma = [torch.ones_like(p) for p in params]
    for t in range(steps):
        seed = step_seed(7, t)
        z = [_normal(seed, i, p.shape) for i, p in enumerate(params)]
        directions = [zi * s.sqrt() for zi, s in zip(z, sigma)]
        zero = float(loss())
        plus, minus = _loss_at(params, directions, eps, loss), _loss_at(params, directions, -eps, loss)
        g, curvature = (plus - minus) / (2 * eps), abs(plus + minus - 2 * zero) / (2 * eps**2)
        for i, p in enumerate(params):
            sigma[i] = (1 - alpha) * sigma[i] + alpha * curvature * z[i] ** 2 / sigma[i]
            p.sub_(lr * g * z[i] * sigma[i].sqrt())
    return params, sigma


def test_lozo_matches_its_direct_reimplementation_across_a_window_change():
    params, loss = _problem()
    optimizer = make_optimizer(LOZO, params, lr=0.01, eps=1e-3, weight_decay=0.1, seed=7, rank=2, interval=3)
    for _ in range(5):
        optimizer.step(loss)
    for got, want in zip(params, _reference_lozo(5, lr=0.01, eps=1e-3, wd=0.1, rank=2, interval=3)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_lozo_moves_a_matrix_in_a_rank_r_subspace_within_a_window():
    params, loss = _problem()
    start = params[0].clone()
    optimizer = make_optimizer(LOZO, params, lr=0.01, eps=1e-3, seed=7, rank=1, interval=10)
    for _ in range(4):
        optimizer.step(loss)
    moved = params[0] - start  # the sum of g_t u_t vᵀ with one v: rank 1
    assert torch.linalg.matrix_rank(moved).item() == 1


def test_hizoo_matches_its_direct_reimplementation():
    params, loss = _problem()
    optimizer = make_optimizer(HiZOO, params, lr=0.005, eps=1e-3, seed=7, hessian_smooth=0.1)
    for _ in range(4):
        optimizer.step(loss)
    want_params, want_sigma = _reference_hizoo(4, lr=0.005, eps=1e-3, alpha=0.1)
    for got, want in zip(params, want_params):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for p, want in zip(params, want_sigma):
        torch.testing.assert_close(optimizer.state[p]["sigma"], want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(want_sigma[0], torch.ones_like(want_sigma[0]))  # Σ did move


@pytest.mark.parametrize(
    "cls, options, scale, lr",
    [
        (LOZO, {"rank": 2, "interval": 4}, 1.0, 0.003),
        # HiZOO's Σ settles near the curvature scale (tr H / 2 here) and multiplies the step: a flatter loss
        (HiZOO, {"hessian_smooth": 0.05}, 1 / 64, 0.1),
    ],
)
def test_each_lowers_a_least_squares_loss(cls, options, scale, lr):
    params, loss = _problem(torch.float32)
    start = float(loss()) * scale
    optimizer = make_optimizer(cls, params, lr=lr, eps=1e-3, seed=1, **options)
    for _ in range(300):
        optimizer.step(lambda: loss() * scale)
    assert float(loss()) * scale < 0.5 * start


@pytest.mark.parametrize("cls, options", [(LOZO, {"rank": 2, "interval": 4}), (HiZOO, {"hessian_smooth": 0.05})])
def test_a_resumed_optimizer_continues_bitwise(cls, options):
    params, loss = _problem(torch.float32)
    optimizer = make_optimizer(cls, params, lr=0.003, eps=1e-3, seed=3, **options)
    for _ in range(3):  # LOZO: saved mid-window, so V must come back without being stored
        optimizer.step(loss)
    saved_params, saved_state = [p.clone() for p in params], copy.deepcopy(optimizer.state_dict())
    for _ in range(4):
        optimizer.step(loss)
    resumed_params, resumed_loss = _problem(torch.float32)
    for p, s in zip(resumed_params, saved_params):
        p.copy_(s)
    resumed = make_optimizer(cls, resumed_params, lr=0.003, eps=1e-3, seed=99, **options)
    resumed.load_state_dict(saved_state)
    for _ in range(4):
        resumed.step(resumed_loss)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))


def test_a_lozo_checkpoint_of_another_rank_is_refused():
    params, loss = _problem()
    optimizer = make_optimizer(LOZO, params, lr=0.01, rank=2)
    optimizer.step(loss)
    with pytest.raises(ValueError, match="rank"):
        make_optimizer(LOZO, params, lr=0.01, rank=1).load_state_dict(optimizer.state_dict())


def test_hizoo_refuses_what_it_cannot_compose_with():
    params, _ = _problem()
    with pytest.raises(ValueError, match="block_scales"):
        make_optimizer(HiZOO, params, block_scales=object())
    with pytest.raises(ValueError, match="one query"):
        make_optimizer(HiZOO, params, queries=2)
    with pytest.raises(ValueError, match="hessian_smooth"):
        make_optimizer(HiZOO, params, hessian_smooth=2.0)
    with pytest.raises(ValueError, match="rank"):
        make_optimizer(LOZO, params, rank=0)


def test_a_non_finite_loss_skips_hizoo_and_keeps_sigma():
    params, _ = _problem()
    before = [p.clone() for p in params]
    optimizer = make_optimizer(HiZOO, params, lr=0.1)
    out = optimizer.step(lambda: torch.tensor(math.nan))
    assert out.skipped and optimizer.num_skipped == 1
    assert all(torch.equal(s["sigma"], torch.ones_like(s["sigma"])) for s in optimizer.state.values())
    for p, q in zip(params, before):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["hizoo", "lozo"])
def test_each_lowers_the_tiny_lms_loss_on_a_batch(name, tiny_data):
    batch = next(iter(tiny_data(batch_size=8).train_dataloader()))
    model = load_causal_lm("tiny-llama")
    model.requires_grad_(False)
    optimizer = make_optimizer(name, list(model.parameters()), lr=2e-3, seed=0, noise="philox", lozo_rank=2)
    start = float(batch_loss(model, batch)[0])
    for _ in range(40):
        optimizer.step(lambda: batch_loss(model, batch)[0])
    assert float(batch_loss(model, batch)[0]) < start - 0.02


@pytest.mark.parametrize("name", ["hizoo", "lozo"])
def test_the_module_trains_with_it(name, tiny_data, tmp_path):
    import lightning as L

    from zolightning.modules import ZOFineTuneModule

    rule = LOZO(rank=2, interval=2) if name == "lozo" else HiZOO()  # a rule object, as LightningCLI builds it
    module = ZOFineTuneModule(model="tiny-llama", optimizer=rule, lr=1e-3)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=tiny_data())
    optimizer = trainer.optimizers[0]
    assert optimizer.rule is rule and trainer.global_step == 3
