"""The `zolightning` command: every shipped config parses, the tiny pipeline runs end to end."""

from pathlib import Path

import pytest

from benchmarks.read_curves import scalars
from tests.conftest import tiny_cli_args
from zolightning.cli.entry import main as entry_main
from zolightning.cli.main import ZOLightningCLI, main
from zolightning.data import TaskDataModule
from zolightning.distributed.strategies import ZODDPStrategy
from zolightning.modules import ZOFineTuneModule

CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
    if p.parent.name not in ("compare", "tasks")
)


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(config, capsys):
    command = ["meta", "fit"] if config.parent.name == "meta" else ["fit"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "\nmodel:" in printed and "\ndata:" in printed
    assert "\noptimizer:" not in printed  # the ZO step is the module's; no first-order optimizer flags


def test_tiny_fit_writes_tensorboard_curves_and_checkpoints(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    main(["fit", *tiny_cli_args(tmp_path, data_dir, "--trainer.max_steps", "10", "--trainer.val_check_interval", "5")])
    run = tmp_path / "tiny-sst2-mezo" / "version_0"
    curves = scalars(run)
    for tag in (
        "train/loss",
        "zo/projected_grad",
        "val/acc",
        "val/loss",
        "eval/acc",
        "lr",
        "data/truncated_train",
        "data/left_out_eval",
    ):
        assert tag in curves, tag
    assert sorted(curves["val/acc"]) == [4, 9]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_ddp_is_replaced_by_the_wrapper_free_strategy(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cli = ZOLightningCLI(
        ZOFineTuneModule,
        TaskDataModule,
        run=False,
        args=tiny_cli_args(tmp_path, data_dir, "--trainer.strategy", "ddp", "--trainer.devices", "1"),
    )
    assert isinstance(cli.trainer.strategy, ZODDPStrategy)
    assert cli.datamodule.tokenizer_name == cli.model.hparams.model == "tiny-llama"


def test_help_shows_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "perturbation scale epsilon" in out and "training examples per step" in out


def test_the_command_without_a_subcommand_lists_every_command(capsys):
    for argv, code in (([], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as exit_info:
            entry_main(argv)
        assert exit_info.value.code == code
        out = capsys.readouterr().out
        assert all(
            f"\n  {command} " in out for command in ("fit", "validate", "meta", "compare", "optimizer", "export")
        )


def test_optimizer_commands_inspect_and_refuse_untrusted_pickles(tmp_path, capsys):
    shipped = Path(__file__).resolve().parents[1] / "optimizers" / "smollm2-135m-instruct.from-llama-3.2-1b.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        entry_main(["optimizer", "inspect", str(shipped)])  # the `zolightning` command's entry point
    assert exit_info.value.code == 0
    assert "blocks: 272" in capsys.readouterr().out
    reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "zo_fine_tuner" / "llama1B_finetuner.pth"
    with pytest.raises(SystemExit) as exit_info:
        entry_main(["optimizer", "convert", str(reference), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("task", "metric"), [("squad", "val/f1"), ("copa", "val/acc")])
def test_zero_shot_validate_on_generation_and_lm_trained_tasks(task, metric, tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    main(
        [
            "validate",
            "--config",
            f"configs/{task}/mezo.yaml",
            "--model.model",
            "tiny-llama",
            "--data.data_dir",
            str(data_dir),
            "--data.num_train",
            "8",
            "--data.num_dev",
            "4",
            "--data.num_eval",
            "4",
            "--data.max_length",
            "256",
            "--data.max_new_tokens",
            "4",
            "--data.eval_batch_size",
            "4",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.name",
            "zs",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    curves = scalars(tmp_path / "zs" / "version_0")
    assert metric in curves and metric.replace("val/", "eval/") in curves


def test_meta_fit_writes_a_learned_optimizer_file(tmp_path, data_dir, monkeypatch):
    from zolightning.variance import LearnedOptimizerFile

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "meta.safetensors"
    main(
        [
            "meta",
            "fit",
            "--config",
            "configs/meta/multitask.yaml",
            "--model.model",
            "tiny-llama",
            "--data.data_dir",
            str(data_dir),
            "--data.num_train",
            "8",
            "--data.max_length",
            "256",
            "--trainer.max_steps",
            "6",
            "--data.order",
            "round_robin",  # the first three tasks of the config, in turn
            "--model.output",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    learned = LearnedOptimizerFile.load(out)
    assert learned.provenance["meta_trained"] and learned.provenance["tasks"] == ["boolq", "copa", "sst2"]
    assert learned.provenance["meta_steps"] == 3 and len(learned.names) == 20


def test_the_progress_bar_counts_steps_not_epochs(tmp_path, data_dir, capsys):
    from zolightning.cli.main import main

    args = ["fit", "--config", "configs/tiny/sst2_mezo.yaml", "--data.data_dir", str(data_dir)]
    main(args + ["--trainer.logger", "false", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4"])
    printed = capsys.readouterr()
    bar = printed.out + printed.err
    assert "step: 100%" in bar and "4/4" in bar and "Epoch 0/-2" not in bar, bar[-2000:]
