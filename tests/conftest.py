"""Shared fixtures: the shared data folder and tiny-model builders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ZOLIGHTNING_TEST_DATA", REPO.parent / "shared" / "data"))  # GPU machine: its copy


@pytest.fixture(scope="session", autouse=True)
def _gguf_cache_of_this_session(tmp_path_factory):
    """SmolLM2's de-quantized copy goes to a folder of this test session, not the user's ~/.cache."""
    os.environ.setdefault("ZOLIGHTNING_CACHE", str(tmp_path_factory.mktemp("zolightning_cache")))


def tiny_cli_args(save_dir, data_dir, *extra: str) -> list[str]:
    """Options of a `zolightning` command on the tiny SST-2 config, logging under `save_dir`, no progress bar."""
    return ["--config", "configs/tiny/sst2_mezo.yaml", "--data.data_dir", str(data_dir)] + [
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _no_process_group_outlives_a_test():
    """A test that opens a process group in-process must close it: a later fit's ranks would inherit its port."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2" / "train.jsonl").is_file():
        pytest.fail(f"the shared task data is expected at {DATA_DIR} (see README: Data)")
    return DATA_DIR


@pytest.fixture()
def tiny_data(data_dir):
    """A set-up SST-2 DataModule on the byte tokenizer of the tiny models (64 train / 16 dev / 16 eval)."""
    from zolightning.data import TaskDataModule

    def make(**overrides):
        kwargs = dict(
            task="sst2",
            tokenizer="tiny-llama",
            data_dir=str(data_dir),
            num_train=64,
            num_dev=16,
            num_eval=16,
            batch_size=4,
            eval_batch_size=8,
        )
        kwargs.update(overrides)
        module = TaskDataModule(**kwargs)
        module.setup()
        return module

    return make


@pytest.fixture()
def tiny_multitask(data_dir):
    """A set-up MultiTaskDataModule over `tasks` on the tiny models' tokenizer."""
    from zolightning.data import MultiTaskDataModule

    def make(tasks, **overrides):
        kwargs = dict(
            tokenizer="tiny-llama",
            data_dir=str(data_dir),
            batch_size=2,
            num_train=8,
            num_eval=4,
            max_length=256,
            eval_batch_size=4,
        )
        kwargs.update(overrides)
        module = MultiTaskDataModule(tasks, **kwargs)
        module.setup()
        return module

    return make


@pytest.fixture()
def run_interpreted():
    """Run a script with Triton's interpreter (the fused kernels on CPU tensors); assert it printed `done`."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")

    def run(script: str, done: str) -> None:
        env = dict(os.environ, TRITON_INTERPRET="1")  # read at import: a process of its own
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert done in result.stdout

    return run
