"""The built wheel, installed in a fresh venv, works away from the checkout: shipped configs by name, a fit,
its predictions and its export (issue #32, "outside the checkout")."""

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("installed")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", root / "wheel", REPO)
    _run(sys.executable, "-m", "venv", root / "venv")
    python = root / "venv" / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The dependencies come from the test environment's site-packages, after the venv's own (whose zolightning is
    # the wheel's): that folder's own .pth files, the editable install of the checkout among them, are not read.
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", *(root / "wheel").glob("*.whl"))
    return root / "venv"


def test_a_fit_predict_and_export_run_from_an_installed_wheel(venv, tmp_path, data_dir):
    bin_dir = venv / "bin"
    where = _run(bin_dir / "python", "-c", "import zolightning; print(zolightning.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    assert "sst2/mezo" in _run(bin_dir / "zolightning", "configs", "list", cwd=tmp_path).stdout
    common = ["--config", "tiny/sst2_mezo", "--data.data_dir", data_dir, "--trainer.enable_progress_bar", "false"]
    fit = _run(bin_dir / "zolightning", "fit", *common, "--trainer.max_steps", "2", "--trainer.val_check_interval",
               "2", "--trainer.default_root_dir", "out", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "out" / "logs" / "tiny-sst2-mezo" / "version_0"
    assert "run folder: out/logs/tiny-sst2-mezo/version_0" in fit.stderr and "zolightning export" in fit.stderr
    last = run / "checkpoints" / "last.ckpt"
    _run(bin_dir / "zolightning", "predict", *common, "--ckpt_path", last, "--trainer.logger.init_args.save_dir",
         tmp_path / "predict", cwd=tmp_path)  # fmt: skip
    assert (
        len((tmp_path / "predict" / "tiny-sst2-mezo" / "version_0" / "predictions.jsonl").read_text().splitlines())
        == 32
    )
    _run(bin_dir / "zolightning", "export", last, tmp_path / "exported", cwd=tmp_path)
    card = (tmp_path / "exported" / "README.md").read_text()  # installed: a version, no commit
    assert "task: sst2" in card and "steps: 2" in card and "val/acc" in card and "zolightning 0.1.0." in card, card
