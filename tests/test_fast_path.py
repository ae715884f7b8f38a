"""`noise: auto` / `fast_forward: auto`: the path a run takes, why, and that resuming keeps its noise."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from zolightning.forward import fast_path
from zolightning.forward.fast_path import choose_path
from zolightning.models import load_causal_lm
from zolightning.modules import ZOFineTuneModule


@pytest.fixture(scope="module")
def model():
    return load_causal_lm("tiny-llama")


def test_auto_on_the_cpu_is_the_reference_path(model):
    path = choose_path(model, "auto", "auto")
    assert (path.noise, path.fast_forward) == ("generator", False)
    assert "CPU" in path.why and path.noise_definition == "torch-generator"


def test_auto_on_cuda_with_triton_is_the_fused_compiled_path(model, monkeypatch):
    monkeypatch.setattr(fast_path, "_on_cuda", lambda m: True)
    monkeypatch.setattr(fast_path, "_fused_pass_usable", lambda m: True)
    path = choose_path(model, "auto", "auto")
    assert (path.noise, path.fast_forward, path.noise_definition) == ("philox", True, "philox-v1")
    assert "Triton" in path.why and "CUDA-graphed" in path.why
    monkeypatch.setattr(fast_path, "_fused_pass_usable", lambda m: False)  # e.g. no Triton on this install
    assert choose_path(model, "auto", "auto").noise == "generator"


def test_explicit_settings_are_kept(model):
    path = choose_path(model, "philox", True)
    assert (path.noise, path.fast_forward, path.why) == ("philox", True, "as configured")


def test_a_recorded_noise_is_taken_over_by_auto_and_a_different_one_refused(model):
    assert choose_path(model, "auto", False, recorded_noise="philox").noise == "philox"
    with pytest.raises(ValueError, match="trained with noise='philox'.*asks for noise='generator'"):
        choose_path(model, "generator", False, recorded_noise="philox")


def _fit(tmp_path, module, data, max_steps, ckpt_path=None):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return tmp_path / "last.ckpt"


def test_resume_keeps_the_checkpoints_noise_and_refuses_another(tmp_path, tiny_data):
    last = _fit(tmp_path, ZOFineTuneModule(model="tiny-llama", lr=1e-3, noise="philox"), tiny_data(), 2)
    saved = torch.load(last, weights_only=False)
    assert (saved["zo_noise"], saved["zo_noise_definition"]) == ("philox", "philox-v1")
    resumed = ZOFineTuneModule(model="tiny-llama", lr=1e-3)  # noise: auto
    _fit(tmp_path / "auto", resumed, tiny_data(), 4, ckpt_path=last)
    assert resumed.path.noise == "philox" and resumed.global_step == 4
    with pytest.raises(ValueError, match="trained with noise='philox'"):
        _fit(tmp_path / "other", ZOFineTuneModule(model="tiny-llama", noise="generator"), tiny_data(), 4, last)
