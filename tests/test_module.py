"""ZOFineTuneModule under a real Lightning Trainer, on the tiny model."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.read_curves import scalars
from zolightning.data.encoding import collate
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.modules import ZOFineTuneModule
from zolightning.optim import ZOOptimizer


def _trainer(tmp_path, max_steps, callbacks=(), **kwargs):
    kwargs.setdefault("limit_val_batches", 1)
    kwargs.setdefault("log_every_n_steps", 1)  # train/loss, lr, perf/* are logged at logging steps
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
        default_root_dir=tmp_path,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        **kwargs,
    )


def _logged(trainer) -> dict[str, float]:
    """The last logged value of every tag of the run's TensorBoard events."""
    return {tag: curve[max(curve)] for tag, curve in scalars(trainer.logger.log_dir).items()}


class _CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _weights(module):
    return [p.detach().clone() for p in module.model.parameters()]


def test_zosgd_lowers_the_loss_of_the_tiny_lm(tiny_data):
    data = tiny_data()
    batch = collate(data.splits["train"][:8], data.pad_id)
    model = load_causal_lm("tiny-llama")
    optimizer = ZOOptimizer(model.parameters(), lr=3e-3, eps=1e-3, seed=0)

    def closure():
        return batch_loss(model, batch)[0]

    with torch.no_grad():
        start = closure().item()
    for _ in range(100):
        optimizer.step(closure)
    with torch.no_grad():
        assert closure().item() < start - 0.02


def test_global_step_counts_zo_steps_and_metrics_are_logged(tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    trainer = _trainer(tmp_path, max_steps=7)
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 7
    assert trainer.optimizers[0].num_steps == 7
    logged = _logged(trainer)
    for key in ("train/loss", "zo/projected_grad", "lr", "perf/examples_per_sec", "val/acc", "eval/acc"):
        assert key in logged, key
    assert "train/loss" in trainer.callback_metrics  # the divergence guard and the progress bar read it


def test_no_gradients_are_ever_allocated(tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    _trainer(tmp_path, max_steps=3).fit(module, datamodule=tiny_data())
    assert all(p.grad is None for p in module.model.parameters())


@pytest.mark.parametrize("noise", ["generator", "philox"])
def test_resume_from_checkpoint_is_bitwise_identical(tmp_path, tiny_data, noise):
    L.seed_everything(0)
    straight = ZOFineTuneModule(model="tiny-llama", lr=1e-3, lr_schedule="linear", noise=noise)
    _trainer(tmp_path / "a", max_steps=10).fit(straight, datamodule=tiny_data())

    # Crash after step 7, with the last checkpoint at step 5; resume and finish.
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    crashed = ZOFineTuneModule(model="tiny-llama", lr=1e-3, lr_schedule="linear", noise=noise)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "b", max_steps=10, callbacks=[checkpoint, _CrashAt(7)]).fit(crashed, datamodule=tiny_data())
    saved = sorted((tmp_path / "ckpt").glob("*step=5*.ckpt"))
    assert saved, list((tmp_path / "ckpt").iterdir())
    resumed = ZOFineTuneModule(model="tiny-llama", lr=1e-3, lr_schedule="linear", noise=noise)
    trainer = _trainer(tmp_path / "c", max_steps=10)
    trainer.fit(resumed, datamodule=tiny_data(), ckpt_path=saved[0])
    assert trainer.global_step == 10
    for a, b in zip(_weights(straight), _weights(resumed)):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(_weights(straight), _weights(crashed)))


@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_bf16_with_philox_noise_trains_without_the_warning(tmp_path, tiny_data, caplog, stochastic_rounding):
    module = ZOFineTuneModule(
        model="tiny-llama", dtype="bfloat16", lr=1e-3, noise="philox", stochastic_rounding=stochastic_rounding
    )
    before = _weights(module)
    trainer = _trainer(tmp_path, max_steps=4, precision="bf16-true")
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 4 and trainer.optimizers[0].noise == "philox"
    assert "half-precision" not in caplog.text
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(module)))


def test_half_precision_training_warns_and_counts_accuracy_in_float32(tmp_path, tiny_data, caplog):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    trainer = _trainer(tmp_path, max_steps=4, precision="bf16-true", limit_val_batches=1.0)
    trainer.fit(module, datamodule=tiny_data(num_dev=300))
    assert "half-precision" in caplog.text
    assert module.split_metrics["dev_metrics"]["acc"].mean_value.dtype == torch.float32
    correct = trainer.callback_metrics["val/acc"].item() * 300
    assert abs(correct - round(correct)) < 1e-3  # an exact count of 300 examples, not a bf16 rounding


def _learned_file(path, model_name="tiny-llama", **fill):
    from zolightning.variance import BlockVarianceNets, LearnedOptimizerFile
    from zolightning.variance.blocks import trainable_named_parameters

    named = trainable_named_parameters(load_causal_lm(model_name))
    nets = BlockVarianceNets(len(named), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for key, value in fill.items():
            getattr(nets, key).fill_(value)
    LearnedOptimizerFile(nets, [n for n, _ in named], [tuple(p.shape) for _, p in named], [None] * len(named)).save(
        path
    )
    return str(path)


@pytest.mark.parametrize("noise", ["generator", "philox"])
def test_learned_variance_trains_and_logs_sigma(tmp_path, tiny_data, noise):
    variance_file = _learned_file(tmp_path / "f.safetensors")
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, variance="learned", variance_file=variance_file, noise=noise)
    before = _weights(module)
    trainer = _trainer(tmp_path, max_steps=4, log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 4 and trainer.optimizers[0].num_skipped == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(module)))
    logged = _logged(trainer)
    for key in ("zo/norm_factor", "sigma/attn_q", "sigma/mlp", "sigma/norm", "sigma/embedding"):
        assert key in logged, key


def test_sigma_ceiling_reaches_the_learned_variance(tmp_path, tiny_data):
    variance_file = _learned_file(tmp_path / "f.safetensors")
    module = ZOFineTuneModule(model="tiny-llama", variance="learned", variance_file=variance_file, sigma_ceiling=1.5)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=tiny_data())
    scales = trainer.optimizers[0].block_scales
    sigma = scales.last_sigma
    assert scales.sigma_ceiling == 1.5 and (sigma == sigma.max()).sum() >= 2  # blocks held at the cap (ties)


def test_run_stops_after_consecutive_non_finite_steps(tmp_path, tiny_data):
    before = [p.detach().clone() for p in load_causal_lm("tiny-llama").parameters()]
    path = _learned_file(tmp_path / "nan.safetensors", b2=float("nan"))
    module = ZOFineTuneModule(
        model="tiny-llama", lr=1e-3, variance="learned", variance_file=path, max_consecutive_skips=3
    )
    with pytest.raises(RuntimeError, match="3 consecutive ZO steps had a non-finite"):
        _trainer(tmp_path, max_steps=10).fit(module, datamodule=tiny_data())
    assert all(torch.equal(a, b) for a, b in zip(before, module.model.parameters()))


def test_learned_variance_needs_a_file():
    with pytest.raises(ValueError, match="variance_file"):
        ZOFineTuneModule(model="tiny-llama", variance="learned")


@pytest.mark.parametrize(("task", "objective"), [("sst2", "accuracy"), ("squad", "f1")])
def test_non_differentiable_objectives_train(task, objective, tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, objective=objective)
    data = tiny_data(
        task=task, objective=objective, max_length=256, max_new_tokens=4, num_train=16, num_dev=4, num_eval=4
    )
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert -1.0 <= trainer.callback_metrics["train/loss"].item() <= 0.0  # minus an accuracy or an F1


def test_objective_must_fit_the_task(tiny_data):
    with pytest.raises(ValueError, match="objective=f1 needs a generation task"):
        tiny_data(objective="f1")


def test_multitask_fine_tuning_logs_each_task(tmp_path, tiny_multitask):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(module, datamodule=tiny_multitask(["copa", "cb"]))
    assert {"val/copa/acc", "val/cb/acc"} <= set(trainer.callback_metrics)


def test_fast_forward_follows_the_eager_trajectory(tmp_path, tiny_data):
    # One padded shape (bucket 256, no validation) keeps compilation to one graph on CPU.
    weights = {}
    for fast in (False, True):
        module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, fast_forward=fast, fast_forward_bucket=256)
        _trainer(tmp_path / str(fast), max_steps=3, limit_val_batches=0).fit(module, datamodule=tiny_data())
        weights[fast] = _weights(module)
        if fast:
            assert module._fast_scorer is not None
    for eager, compiled in zip(weights[False], weights[True]):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


def test_philox_steps_run_without_host_sync_and_still_stop_on_non_finite_losses(tmp_path, tiny_data, monkeypatch):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, noise="philox", max_consecutive_skips=3)
    before = _weights(module)
    monkeypatch.setattr(module, "_objective", lambda batch: torch.tensor(float("nan")))
    trainer = _trainer(tmp_path, max_steps=20, log_every_n_steps=2)
    with pytest.raises(RuntimeError, match="consecutive ZO steps had a non-finite"):
        trainer.fit(module, datamodule=tiny_data())
    optimizer = trainer.optimizers[0]
    assert not optimizer.sync and 3 <= optimizer.consecutive_skipped <= 4  # read at every logging step
    for a, b in zip(before, _weights(module)):  # restored (to fp32 rounding), never updated
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fast_fit_compiles_every_shape_before_step_one_and_never_again(tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, fast_forward=True, fast_forward_lengths=2)
    trainer = _trainer(tmp_path, max_steps=6, limit_val_batches=None, log_every_n_steps=1)
    trainer.fit(module, datamodule=tiny_data(num_eval=12))  # partial last eval batch: padded, not recompiled
    trunk = module._fast_scorer.trunk
    assert trunk.recompiles == 0 and trunk.eager_batches == 0 and trunk.eager_reason is None
    metrics = _logged(trainer)
    assert metrics["perf/recompiles"] == 0 and metrics["perf/val_seconds"] > 0
    assert metrics["perf/first_step_seconds"] >= metrics["perf/compile_seconds"] > 0


def test_interval_mean_leaves_out_skipped_steps_on_device_and_host():
    from zolightning.modules.training_log import IntervalMean

    mean = IntervalMean()
    for value in (torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(3.0)):
        mean.add(value)
    assert mean.pop().item() == 2.0
    mean.add(5.0), mean.add(float("inf")), mean.add(7.0)
    assert mean.pop() == 6.0
    assert mean.pop() != mean.pop()  # nothing added: NaN
