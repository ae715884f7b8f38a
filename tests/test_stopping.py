"""SIGTERM / Ctrl-C stop a run within seconds, at any point, and checkpoints are never half written."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import tiny_cli_args as tiny_args
from zolightning.callbacks.stopping import DurableCheckpointIO, GracefulStop
from zolightning.compare.results import read_scalars
from zolightning.forward.fast_forward import CompiledTrunk
from zolightning.modules import ZOFineTuneModule

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_mid_write_leaves_the_previous_checkpoint_intact_and_no_temporary(tmp_path, monkeypatch):
    io, path = DurableCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def disk_full(checkpoint, stream):
        stream.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DurableCheckpointIO, "write", staticmethod(disk_full))
    with pytest.raises(OSError, match="could not write checkpoint .*No space left on device.*previous one is intact"):
        io.save_checkpoint({"step": 2, "weights": torch.ones(1000)}, path)
    assert torch.load(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_sigkill_in_the_middle_of_a_checkpoint_write_loses_nothing_saved(tmp_path, data_dir):
    args = tiny_args(tmp_path, data_dir, "--trainer.max_steps", "8", "--trainer.val_check_interval", "4")
    script = REPO / "tests" / "scripts" / "fit_killed_mid_save.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(script), *args], cwd=REPO, stderr=subprocess.PIPE, text=True, env=env
    )
    seen, blocked = [], threading.Event()
    reader = threading.Thread(
        target=_read_until, args=(process.stderr, "blocked in the checkpoint write", seen, blocked)
    )
    reader.start()
    try:
        assert blocked.wait(180), "".join(seen[-20:])
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
    finally:
        process.kill()
        reader.join()
    checkpoints = tmp_path / "tiny-sst2-mezo" / "version_0" / "checkpoints"
    step = torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"]
    assert step == 4  # the first save, whole; the second was cut at half a zip header
    from zolightning.cli.main import main

    main(["fit", *args, "--ckpt_path", "last"])  # resumes that file, in the same folder
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_signal_is_deferred_inside_the_training_loop_and_immediate_elsewhere():
    stop = GracefulStop()
    stop._active = stop._deferring = True
    stop._handle(signal.SIGTERM, None)  # noted: the step in flight finishes first
    assert stop.received == signal.SIGTERM
    with pytest.raises(SystemExit, match="SIGTERM") as stopped:  # a second one stops at once
        stop._handle(signal.SIGTERM, None)
    assert stopped.value.code == 128 + signal.SIGTERM
    stop._deferring = False
    with pytest.raises(SystemExit, match="SIGINT") as stopped:
        stop._handle(signal.SIGINT, None)  # outside the loop: at once, with the exit code of a stop
    assert stopped.value.code == 128 + signal.SIGINT
    stop._active = False  # after the fit: the handler passes signals on as before it
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_sigterm_while_compiling_stops_the_fit_at_once(tmp_path, tiny_data, monkeypatch):
    def slow_compilation(self, device, progress=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # a long compilation; the signal must cut it short

    monkeypatch.setattr(CompiledTrunk, "warm_up", slow_compilation)
    module = ZOFineTuneModule(model="tiny-llama", fast_forward=True)
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    before, start = signal.getsignal(signal.SIGTERM), time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(module, datamodule=tiny_data())
    assert stopped.value.code == 128 + signal.SIGTERM  # a stop, not a failure (Lightning's Ctrl-C path exits 1)
    assert time.perf_counter() - start < 10 and trainer.global_step == 0
    handler = signal.getsignal(signal.SIGTERM)  # given back, or left by Lightning but passing signals on
    assert handler is before or not handler.__self__._active


def _read_until(stream, needle: str, seen: list[str], found: threading.Event) -> None:
    for line in stream:
        seen.append(line)
        if needle in line:
            found.set()


def _stop_when(command: list[str], needle: str, after: float) -> tuple[int, float, list[str]]:
    """Run `zolightning` with `command`, SIGTERM it `after` seconds past the first log line holding `needle`:
    (exit code, seconds from the signal to the exit, the log lines seen)."""
    args = [sys.executable, "-m", "zolightning", *command]
    process = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, started = [], threading.Event()
    reader = threading.Thread(target=_read_until, args=(process.stderr, needle, seen, started))
    reader.start()
    try:
        assert started.wait(180), "".join(seen[-20:])
        time.sleep(after)
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        return code, time.perf_counter() - sent, seen
    finally:
        process.kill()
        reader.join()


ON_GPU = pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("accelerator", ["cpu", ON_GPU])  # on a GPU: the compiled forward and the fused pass
def test_sigterm_during_training_saves_the_step_and_the_run_resumes(tmp_path, data_dir, accelerator):
    long_run = ("--trainer.max_steps", "100000", "--trainer.val_check_interval", "50000")
    command = ["fit", *tiny_args(tmp_path, data_dir, *long_run, "--trainer.limit_val_batches", "1",
                                 "--trainer.accelerator", accelerator)]  # fmt: skip
    code, stopped_in, seen = _stop_when(command, "first step done", after=1.0)  # some steps into the run
    assert code == 128 + signal.SIGTERM, "".join(seen[-20:])
    assert stopped_in < 10
    last = tmp_path / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] > 1 and any("stopped at step" in line for line in seen)
    logged = read_scalars(last.parent.parent)["train/loss"]  # the steps since the last logging step too
    assert max(logged) == saved["global_step"] - 1, (sorted(logged)[-3:], saved["global_step"])
    from zolightning.cli.main import main

    step = saved["global_step"]
    main([*command, "--trainer.max_steps", str(step + 2), "--ckpt_path", str(last)])
    resumed = tmp_path / "tiny-sst2-mezo" / "version_1" / "checkpoints" / "last.ckpt"  # saved at the end
    assert torch.load(resumed, weights_only=False)["global_step"] == step + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sigterm_while_a_gpu_fit_compiles_stops_it_within_seconds(tmp_path, data_dir):
    command = ["fit", *tiny_args(tmp_path, data_dir, "--trainer.accelerator", "gpu")]
    code, stopped_in, seen = _stop_when(command, "compiling the scoring forward", after=0.0)
    assert code == 128 + signal.SIGTERM, "".join(seen[-20:])
    assert stopped_in < 10, stopped_in
    assert not any("first step done" in line for line in seen)


class _SignalAfterTheCallbacks(ZOFineTuneModule):
    """SIGTERM between GracefulStop's end-of-batch hook and Lightning's own check of its SIGTERM flag."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # module hooks run after callbacks'
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_after_the_step_hooks_still_saves_and_exits_as_a_stop(tmp_path, tiny_data):
    trainer = L.Trainer(
        max_steps=50, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(_SignalAfterTheCallbacks(model="tiny-llama"), datamodule=tiny_data())
    assert stopped.value.code == 128 + signal.SIGTERM  # Lightning's own stop would exit 0 without a checkpoint
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
