"""`--trainer.strategy zo_offload` under Lightning (on the CPU nothing moves, the streamed step still runs): the fit
follows the resident fit, checkpoints hold the applied last update, and impossible combinations are refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from zolightning.modules import ZOFineTuneModule
from zolightning.offload import ZOOffloadStrategy
from zolightning.offload.optimizer import StreamedZOOptimizer


def _trainer(tmp_path, max_steps, strategy="auto", callbacks=()):
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, strategy=strategy,
        logger=TensorBoardLogger(tmp_path, name="run"), enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(callbacks), callbacks=list(callbacks), limit_val_batches=1, val_check_interval=4,
        check_val_every_n_epoch=None, log_every_n_steps=1,
    )  # fmt: skip


def _module(**options):
    return ZOFineTuneModule(model="tiny-llama-untied", lr=1e-3, noise="philox", weight_decay=0.01, **options)


def _weights(module):
    return [p.detach().clone() for p in module.model.parameters()]


@pytest.mark.parametrize("rule", ["zo_sgd", "zo_adam"])
def test_an_offloaded_fit_takes_the_resident_fits_steps(tmp_path, tiny_data, rule):
    resident = _module(optimizer=rule)
    _trainer(tmp_path / "resident", 10).fit(resident, datamodule=tiny_data())
    streamed = _module(optimizer=rule)
    trainer = _trainer(tmp_path / "streamed", 10, strategy="zo_offload")
    trainer.fit(streamed, datamodule=tiny_data())
    assert isinstance(trainer.optimizers[0], StreamedZOOptimizer)
    assert trainer.optimizers[0].settled  # the last update reached every unit at the end of the fit
    for a, b in zip(_weights(resident), _weights(streamed)):
        assert torch.equal(a, b)
    assert trainer.callback_metrics["val/acc"] == pytest.approx(float(_val_acc(tmp_path / "resident")))


def _val_acc(folder):
    from benchmarks.read_curves import scalars

    log_dir = next(folder.rglob("events.out.tfevents.*")).parent
    curve = scalars(str(log_dir))["val/acc"]
    return curve[max(curve)]


def test_an_offloaded_run_resumes_to_the_same_weights(tmp_path, tiny_data):
    straight = _module(optimizer="zo_sgd_momentum")
    _trainer(tmp_path / "a", 8, strategy="zo_offload").fit(straight, datamodule=tiny_data())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = _module(optimizer="zo_sgd_momentum")
    _trainer(tmp_path / "b", 5, strategy="zo_offload", callbacks=[checkpoint]).fit(first, datamodule=tiny_data())
    saved = sorted((tmp_path / "ckpt").glob("*step=5*.ckpt"))
    resumed = _module(optimizer="zo_sgd_momentum")
    trainer = _trainer(tmp_path / "c", 8, strategy=ZOOffloadStrategy())
    trainer.fit(resumed, datamodule=tiny_data(), ckpt_path=saved[0])
    for a, b in zip(_weights(straight), _weights(resumed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accumulate_grad_batches": 2}, "one batch per step"),
        ({"optimizer": "hizoo"}, "block by block"),
        ({"noise": "generator"}, "noise=philox"),
    ],
)
def test_offload_refuses_what_it_cannot_run_with_one_line(tmp_path, tiny_data, options, message):
    module = ZOFineTuneModule(model="tiny-llama-untied", lr=1e-3, **options)
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, 2, strategy="zo_offload").fit(module, datamodule=tiny_data())


def test_an_offloaded_checkpoint_exports_the_trained_weights(tmp_path, tiny_data):
    from transformers import AutoModelForCausalLM

    from zolightning.cli.export import main as export_main

    module = _module()
    trainer = _trainer(tmp_path, 6, strategy="zo_offload")
    trainer.fit(module, datamodule=tiny_data())
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)  # the last step's update reached the host weights first
    out = tmp_path / "exported"
    assert export_main([str(checkpoint), str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), b in zip(module.model.named_parameters(), exported.parameters()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(_weights(module), _weights(_module())))  # it trained


@pytest.mark.parametrize("asked", [None, "cuda", torch.device("cuda")])
def test_the_offload_strategy_names_the_cuda_device_with_its_index(monkeypatch, asked):
    # Lightning sets a CUDA device up with torch.cuda.set_device, which refuses a bare "cuda": a real fit failed so
    from zolightning.offload.strategy import _indexed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _indexed(asked) == torch.device("cuda", 3)
    assert _indexed("cpu") == torch.device("cpu")
