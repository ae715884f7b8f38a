"""Meta-training the variance networks on the tiny model (method.md §2.4)."""

import json
import math

import lightning as L
import pytest
import torch

from benchmarks.horizon_quadratic import one_step_optimum, quadratic_meta
from zolightning.data.encoding import collate
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.modules import ZOFineTuneModule
from zolightning.modules.meta_variance import MetaVarianceModule
from zolightning.optim.engine.noise import NoiseSource
from zolightning.variance import BlockVarianceNets
from zolightning.variance.blocks import trainable_named_parameters
from zolightning.variance.meta import FunctionalModel, lookahead, meta_features, unrolled_meta_step


def _loss(model, batch):
    return batch_loss(model, batch)[0]


def _setup(tiny_data, dtype="float32"):
    data = tiny_data(task="copa", max_length=256)
    batch = collate(data.splits["train"][:4], data.pad_id, kind="lm")
    model = load_causal_lm("tiny-llama", dtype=dtype)
    named = trainable_named_parameters(model)
    return model, [n for n, _ in named], [p for _, p in named], batch


def _history(params):
    return torch.zeros(2), torch.ones(len(params))


def test_meta_step_changes_only_the_networks(tiny_data):
    model, names, params, batch = _setup(tiny_data)
    before = [p.detach().clone() for p in params]
    nets = BlockVarianceNets(len(params), generator=torch.Generator().manual_seed(0))
    nets_before = [p.detach().clone() for p in nets.parameters()]
    sizes = torch.tensor([p.numel() for p in params], dtype=torch.float64)
    for horizon in (1, 3):
        unrolled_meta_step(model, names, params, nets, _history(params), sizes, _loss, [batch] * horizon,
                           eps=1e-3, lr_update=1e-2, seeds=range(7, 7 + horizon), noise=NoiseSource())  # fmt: skip
        torch.optim.SGD(nets.parameters(), lr=0.1).step()
        assert all(torch.equal(a, p) for a, p in zip(before, params))  # no pass writes the weights
        assert all(p.grad is None for p in params)
        assert not all(torch.equal(a, p) for a, p in zip(nets_before, nets.parameters()))


def test_the_unrolled_gradient_equals_backpropagation_through_every_step(tiny_data):
    """The regenerated-direction gradient of K = 3 steps against autograd through a graph that keeps every z."""
    model, names, params, batch = _setup(tiny_data, dtype="float64")
    batches = [batch, {**batch, "input_ids": batch["input_ids"].flip(0)}, batch]
    sizes = torch.tensor([p.numel() for p in params], dtype=torch.float64)
    nets = BlockVarianceNets(len(params), generator=torch.Generator().manual_seed(0)).double()
    result = unrolled_meta_step(model, names, params, nets, _history(params), sizes, _loss, batches, eps=1e-3,
                                lr_update=0.05, seeds=[3, 4, 5], noise=NoiseSource())  # fmt: skip
    ours = [p.grad.clone() for p in nets.parameters()]
    nets.zero_grad()
    theta = {n: p.detach() for n, p in zip(names, params)}
    losses, previous = _history(params)
    for k, step in enumerate(result.steps):  # the same steps, g and c as constants, each iterate's features anew
        values = list(theta.values())
        sigma = nets(meta_features([v.detach() for v in values], losses.double(), previous.double()))
        torch.testing.assert_close(sigma.detach(), step.sigma)
        theta = lookahead(names, values, sigma, 0.05 * step.projected_grad * step.c, 3 + k, NoiseSource(), detach=False)
        losses, previous = torch.tensor([step.loss_plus, step.loss_minus]), step.sigma
    reference = sum(_loss(FunctionalModel(model, theta), b) for b in batches) / 3
    reference.backward()
    assert abs(float(reference) - result.meta_loss) < 1e-12
    for a, b in zip(ours, nets.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-9, atol=1e-12)


def test_meta_gradient_of_one_sigma_matches_finite_differences(tiny_data):
    model, names, params, batch = _setup(tiny_data, dtype="float64")
    sigma = torch.rand(len(params), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    step = 0.05

    def lookahead_loss(s):
        return _loss(FunctionalModel(model, lookahead(names, params, s, step, 3, NoiseSource())), batch)

    sigma.requires_grad_(True)
    (grad,) = torch.autograd.grad(lookahead_loss(sigma), sigma)
    # h = 1e-3: the model keeps some float32 internals (rotary tables), so smaller steps meet rounding noise.
    i, h = 1, 1e-3
    with torch.no_grad():
        plus, minus = sigma.detach().clone(), sigma.detach().clone()
        plus[i] += h
        minus[i] -= h
        estimate = (lookahead_loss(plus) - lookahead_loss(minus)) / (2 * h)
    assert abs(grad[i].item()) > 1e-6
    assert abs(grad[i].item() - estimate.item()) <= 2e-3 * abs(estimate.item())


def test_tied_embeddings_stay_tied_through_the_lookahead(tiny_data):
    model, names, params, batch = _setup(tiny_data)
    assert "lm_head.weight" not in names  # the tied head is the embedding tensor, listed once
    theta = lookahead(names, params, torch.ones(len(params)), 0.5, 3, NoiseSource())
    expected_model = load_causal_lm("tiny-llama")
    with torch.no_grad():
        for name, p in expected_model.named_parameters():
            p.copy_(theta[name])  # writes the shared tensor: head and embedding move together
    assert torch.allclose(_loss(FunctionalModel(model, theta), batch), _loss(expected_model, batch), atol=1e-6)


def _cpu_trainer(max_steps):
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def _validating_trainer(limit_val_batches: int) -> L.Trainer:
    """8 optimizer steps (4 meta steps), validating every 2 meta steps."""
    return L.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, val_check_interval=2, limit_val_batches=limit_val_batches,
                     num_sanity_val_steps=0)  # fmt: skip


def _fit_meta(tmp_path, tiny_data, max_steps, **kwargs):
    module = MetaVarianceModule(
        model="tiny-llama", output=str(tmp_path / "meta.safetensors"), save_every_n_steps=0, **kwargs
    )
    trainer = _cpu_trainer(max_steps)
    trainer.fit(module, datamodule=tiny_data(task="copa", num_train=8, max_length=256))
    return module


def test_restart_returns_the_lm_to_the_pretrained_weights_bitwise(tmp_path, tiny_data):
    module = _fit_meta(tmp_path, tiny_data, max_steps=4, restart_epochs=1)  # 2 meta steps = one window
    assert module.meta_steps == 2 and module.window == 2
    pretrained = [module.pretrained[n] for n in module.names]
    assert not all(torch.equal(a, p) for a, p in zip(pretrained, module.params))  # first-order steps moved it
    assert module.restart_if_due()
    assert all(torch.equal(a, p) for a, p in zip(pretrained, module.params))
    assert not module.optimizers()[1].optimizer.state  # fresh momentum


def test_first_order_step_changes_only_the_lm(tmp_path, tiny_data):
    module = _fit_meta(tmp_path, tiny_data, max_steps=2, lr_mlp=0.0)
    initial = BlockVarianceNets(len(module.names), generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(initial.parameters(), module.nets.parameters()))
    assert not all(torch.equal(module.pretrained[n], p) for n, p in zip(module.names, module.params))


def test_a_meta_trained_file_loads_in_the_zo_module(tmp_path, tiny_data):
    _fit_meta(tmp_path, tiny_data, max_steps=4)
    module = ZOFineTuneModule(
        model="tiny-llama", lr=1e-3, variance="learned", variance_file=str(tmp_path / "meta.safetensors")
    )
    trainer = _cpu_trainer(2)
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 2 and trainer.optimizers[0].block_scales is not None


def test_the_lookahead_step_is_the_downstream_lr_or_drawn_from_a_range(tmp_path):
    fixed = MetaVarianceModule(model="tiny-llama", lr_update=1e-5)
    assert fixed.lookahead_lr() == 1e-5
    ranged = MetaVarianceModule(model="tiny-llama", lr_update_range=(1e-6, 3e-5))
    draws = []
    for step in range(200):
        ranged.meta_steps = step
        draws.append(ranged.lookahead_lr())
    assert all(1e-6 <= d <= 3e-5 for d in draws) and len(set(draws)) == 200
    ranged.meta_steps = 7
    assert ranged.lookahead_lr() == draws[7]  # a resumed run draws the same steps
    below = sum(d < (1e-6 * 3e-5) ** 0.5 for d in draws)  # log-uniform: half below the geometric middle
    assert 70 < below < 130
    with pytest.raises(ValueError, match="lr_update_range"):
        MetaVarianceModule(model="tiny-llama", lr_update_range=(1e-5, 1e-6))


def test_meta_training_logs_the_gap_between_zo_and_lookahead_losses(tmp_path, tiny_data):
    module = _fit_meta(tmp_path, tiny_data, max_steps=2, lr_update_range=(1e-4, 1e-2))
    logged = module.trainer.callback_metrics
    assert {"meta/gap", "meta/lr_update"} <= set(logged)
    assert 1e-4 <= float(logged["meta/lr_update"]) <= 1e-2


def test_a_horizon_unrolls_over_the_latest_batches(tmp_path, tiny_data):
    module = _fit_meta(tmp_path, tiny_data, max_steps=8, horizon=3)  # 4 meta steps: horizons 1, 2, 3, 3
    assert float(module.trainer.callback_metrics["meta/horizon"]) == 3
    assert len(module.recent["default"]) == 3
    assert all(torch.isfinite(p).all() for p in module.nets.parameters())
    with pytest.raises(ValueError, match="horizon"):
        MetaVarianceModule(model="tiny-llama", horizon=0)


def test_meta_validation_keeps_the_best_file_and_records_no_history(tmp_path, tiny_data):
    module = MetaVarianceModule(model="tiny-llama", output=str(tmp_path / "meta.safetensors"), save_every_n_steps=0)
    trainer = _validating_trainer(limit_val_batches=2)
    trainer.fit(module, datamodule=tiny_data(task="copa", num_train=8, num_dev=8, max_length=256))
    assert "meta_val/gap" in trainer.callback_metrics and math.isfinite(module.best_val_gap)
    assert (tmp_path / "meta.best.safetensors").is_file() and (tmp_path / "meta.safetensors").is_file()
    assert set(module.history) == {"default"}  # validation batches did not add a task's history


@pytest.mark.filterwarnings("ignore:var_mean")  # a one-element tensor: its variance feature is 0 by design
def test_a_longer_horizon_prefers_the_smaller_safe_step():
    """One step of size a = lr sigma^2 z^2 on (theta - m)^2 / 2 lands on m at a = 1: the one-step loss is 0 there,
    its minimum. After K steps over minima that differ, theta_K weighs the m_j by a (1 - a)^(K-1-j), whose spread
    shrinks as a does, so the K-step loss is lowest at a < 1: a smaller sigma."""
    one_step_best = one_step_optimum()  # a = 1
    loss, grad = quadratic_meta(one_step_best, 1)
    assert loss < 1e-20 and abs(grad) < 1e-9  # the one-step objective sits at its minimum
    loss8, grad8 = quadratic_meta(one_step_best, 8)
    assert grad8 > 0.1  # the 8-step objective pushes sigma down from there
    grid = [one_step_best + d / 10 for d in range(-30, 11)]
    best8 = min(grid, key=lambda s: quadratic_meta(s, 8)[0])
    assert best8 < one_step_best - 0.3 and quadratic_meta(best8, 8)[0] < loss8


def test_downstream_runs_pick_the_file_and_leave_the_meta_training_alone(tmp_path, tiny_data, data_dir):
    from zolightning.variance.downstream import DownstreamValidation
    from zolightning.variance.file_format import LearnedOptimizerFile

    downstream = DownstreamValidation(["cb"], steps=3, lr=1e-3, batch_size=4, num_train=16, num_held_out=8,
                                      max_length=256, data_dir=str(data_dir))  # fmt: skip
    module = MetaVarianceModule(model="tiny-llama", output=str(tmp_path / "meta.safetensors"), save_every_n_steps=0,
                                downstream=downstream)  # fmt: skip
    trainer = _validating_trainer(limit_val_batches=1)
    trainer.fit(module, datamodule=tiny_data(task="copa", num_train=8, num_dev=8, max_length=256))
    runs = [json.loads(line) for line in (tmp_path / "meta.downstream.jsonl").read_text().splitlines()]
    assert [r["meta_step"] for r in runs] == [2, 4] and all(len(r["curve"]) == 3 for r in runs)
    assert math.isclose(module.best_downstream_loss, min(r["held_out_loss"] for r in runs))
    best = LearnedOptimizerFile.load(str(tmp_path / "meta.best.safetensors"))
    assert best.provenance["best_downstream_loss"] == module.best_downstream_loss
    assert best.provenance["downstream"]["tasks"] == ["cb"]
    # the runs start from the pretrained weights and change neither the networks nor the trajectory
    nets = [p.detach().clone() for p in module.nets.parameters()]
    weights = [p.detach().clone() for p in module.params]
    again = downstream.run(module.model, module.pretrained, module.nets, normalize=True)
    assert all(torch.equal(a, p) for a, p in zip(nets, module.nets.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(weights, module.params))
    assert again[0].held_out_loss == downstream.run(module.model, module.pretrained, module.nets, True)[0].held_out_loss


def test_meta_training_resumes_from_its_file(tmp_path, tiny_data):
    from zolightning.variance.file_format import LearnedOptimizerFile

    first = _fit_meta(tmp_path, tiny_data, max_steps=6, lr_update_range=(1e-4, 1e-2))
    assert (tmp_path / "meta.start.safetensors").is_file()  # the networks before any meta step
    start = LearnedOptimizerFile.load(tmp_path / "meta.start.safetensors")
    assert start.provenance["meta_steps"] == 0
    resumed = MetaVarianceModule(model="tiny-llama", lr_update_range=(1e-4, 1e-2),
                                 resume_from=str(tmp_path / "meta.safetensors"))  # fmt: skip
    assert resumed.meta_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(first.nets.parameters(), resumed.nets.parameters()))
    assert resumed.lookahead_lr() == first.lookahead_lr()  # the draws continue where the first run stopped
    with pytest.raises(Exception, match="does not exist"):
        MetaVarianceModule(model="tiny-llama", resume_from=str(tmp_path / "missing.safetensors"))
