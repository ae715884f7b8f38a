"""Meta-training the variance networks on the tiny model (method.md §2.4)."""

import math

import lightning as L
import pytest
import torch

from zolightning.data.encoding import collate
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.modules import ZOFineTuneModule
from zolightning.modules.meta_variance import MetaVarianceModule
from zolightning.optim.engine.noise import NoiseSource
from zolightning.variance import BlockVarianceNets
from zolightning.variance.blocks import trainable_named_parameters
from zolightning.variance.meta import FunctionalModel, lookahead, meta_step


def _loss(model, batch):
    return batch_loss(model, batch)[0]


def _setup(tiny_data, dtype="float32"):
    data = tiny_data(task="copa", max_length=256)
    batch = collate(data.splits["train"][:4], data.pad_id, kind="lm")
    model = load_causal_lm("tiny-llama", dtype=dtype)
    named = trainable_named_parameters(model)
    return model, [n for n, _ in named], [p for _, p in named], batch


def test_meta_step_changes_only_the_networks(tiny_data):
    model, names, params, batch = _setup(tiny_data)
    before = [p.detach().clone() for p in params]
    nets = BlockVarianceNets(len(params), generator=torch.Generator().manual_seed(0))
    nets_before = [p.detach().clone() for p in nets.parameters()]
    features = torch.randn(len(params), 5)
    sizes = torch.tensor([p.numel() for p in params], dtype=torch.float64)
    result = meta_step(
        model, names, params, nets, features, sizes, _loss, batch, eps=1e-3, lr_update=1e-2, seed=7, noise=NoiseSource()
    )
    optimizer = torch.optim.SGD(nets.parameters(), lr=0.1)
    result.meta_loss.backward()
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params))  # L+- and the look-ahead never write weights
    assert all(p.grad is None for p in params)
    assert not all(torch.equal(a, p) for a, p in zip(nets_before, nets.parameters()))


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


def test_meta_validation_keeps_the_best_file_and_records_no_history(tmp_path, tiny_data):
    module = MetaVarianceModule(model="tiny-llama", output=str(tmp_path / "meta.safetensors"), save_every_n_steps=0)
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        val_check_interval=2,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=tiny_data(task="copa", num_train=8, num_dev=8, max_length=256))
    assert "meta_val/gap" in trainer.callback_metrics and math.isfinite(module.best_val_gap)
    assert (tmp_path / "meta.best.safetensors").is_file() and (tmp_path / "meta.safetensors").is_file()
    assert set(module.history) == {"default"}  # validation batches did not add a task's history
