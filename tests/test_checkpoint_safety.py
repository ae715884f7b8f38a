"""A crafted checkpoint runs no code in any command that reads one; the project's own checkpoints still load."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zolightning.checkpoints.safety import UnsafeCheckpointError, check_sharded_checkpoint, load_checkpoint
from zolightning.cli.export import main as export_main
from zolightning.cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs a shell command that creates `marker`: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def crafted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "evil": Payload(marker)}, path)
    return path, marker


def test_the_crafted_checkpoint_does_run_code_when_unpickled_unchecked(crafted):
    path, marker = crafted  # the tests below are meaningful only if this payload really fires
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_with_one_line_naming_the_global_and_the_overrule(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and "posix.system" in message and "--trust-pickle" in message
    assert not marker.exists()


def test_export_refuses_a_crafted_checkpoint_and_runs_nothing(crafted, tmp_path, capsys):
    path, marker = crafted
    assert export_main([str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load" in err and "--trust-pickle" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def _tiny(tmp_path, data_dir, *extra):
    return ["--config", "configs/tiny/sst2_mezo.yaml", "--data.data_dir", str(data_dir)] + [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_lightning_commands_refuse_a_crafted_checkpoint(command, crafted, tmp_path, data_dir, monkeypatch, capsys):
    path, marker = crafted
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, *_tiny(tmp_path, data_dir, "--ckpt_path", str(path))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: refused to load") and "--weights_only false" in err
    assert not marker.exists()


def _crafted_folder(tmp_path: Path, metadata) -> Path:
    folder = tmp_path / "sharded.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    torch.save({"global_step": 1}, folder / "meta.pt")
    return folder


def test_a_sharded_checkpoint_whose_metadata_carries_code_is_refused_before_torch_reads_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    folder = _crafted_folder(tmp_path, Payload(marker))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        check_sharded_checkpoint(folder)
    assert export_main([str(folder), str(tmp_path / "out")]) == 2
    assert "refused to load" in capsys.readouterr().err and not marker.exists()


def test_a_sharded_checkpoint_with_a_pickled_entry_is_refused(tmp_path):
    # torch reads a non-tensor entry of a distributed checkpoint with weights_only=False
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    folder = _crafted_folder(tmp_path, Metadata(state_dict_metadata={"state_dict.evil": BytesStorageMetadata()}))
    with pytest.raises(UnsafeCheckpointError, match="BytesStorageMetadata"):
        check_sharded_checkpoint(folder)


def test_a_sharded_fit_refuses_a_crafted_folder(tmp_path, data_dir):
    marker = tmp_path / "code-ran"
    folder = _crafted_folder(tmp_path, Payload(marker))
    extra = ("--trainer.strategy", "fsdp", "--trainer.devices", "1", "--model.noise", "philox")
    # its own process: the process group it opens must not outlive the test (a later fit would find its port taken)
    args = _tiny(tmp_path, data_dir, *extra, "--ckpt_path", str(folder))
    command = [sys.executable, "-m", "zolightning", "fit", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and not marker.exists(), result.stderr[-2000:]
    assert "refused to load" in result.stderr.strip().splitlines()[-1]


def test_the_projects_own_checkpoints_load_weights_only(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    cli_main(["fit", *_tiny(tmp_path, data_dir, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")])
    last = tmp_path / "logs" / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 2
    assert export_main([str(last), str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "config.json").is_file()


if sys.platform == "win32":  # os.system's pickled name differs there
    pytestmark = pytest.mark.skip("POSIX payload")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + b"\0" * 100], ids=["empty", "truncated"])
def test_an_empty_or_truncated_checkpoint_is_refused_with_one_line(content, tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *_tiny(tmp_path, data_dir, "--ckpt_path", str(broken))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {broken} is empty or truncated")


def test_ckpt_path_last_without_a_run_names_where_it_looked(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *_tiny(tmp_path, data_dir, "--ckpt_path", "last")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no last.ckpt under {tmp_path / 'logs' / 'tiny-sst2-mezo'}/*/checkpoints/" in err


def test_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    steps = ("--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1")
    cli_main(["fit", *_tiny(tmp_path, data_dir, *steps, "--trainer.max_steps", "2")])
    cli_main(["fit", *_tiny(tmp_path, data_dir, *steps, "--trainer.max_steps", "4", "--ckpt_path", "last")])
    runs = sorted(p.name for p in (tmp_path / "logs" / "tiny-sst2-mezo").iterdir())
    assert runs == ["version_0"]  # before: a new version_1, started from step 0
    last = tmp_path / "logs" / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # before: examples silently repeated within every batch
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *_tiny(tmp_path, data_dir, "--data.batch_size", "100")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "larger than the 64 training examples" in err
